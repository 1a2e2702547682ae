"""``liverlab synthesize`` and ``liverlab evaluate``: use trained models.

Nothing heavy is imported until a command runs, so ``liverlab --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from liverlab.errors import LiverlabError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthesize", help="CT -> synthetic MRI with a trained EssNet checkpoint",
        description="CT -> synthetic MRI volumes with the CT affine and liver label, in the nnU-Net layout with a "
        "manifest and `provenance.json`; reused when asked again for the same checkpoint and data.",
    )
    p.add_argument("--checkpoint", required=True, help="EssNet checkpoint (file or checkpoint folder)")
    p.add_argument("--data", required=True, help="nnU-Net folder of CT cases")
    p.add_argument("--out", required=True, help="output folder (reused when made from the same inputs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run G_mri (auto: CUDA when available)")
    p.set_defaults(func=_synthesize)

    p = sub.add_parser(
        "evaluate", help="CHAOS metrics: prediction vs label files, or a U-Net on a dataset",
        description="With --pred P --label L: IoU, Dice, RAVD (%), ASSD and MSSD (mm) for two NIfTI files or two "
        "folders with matching case names; the predictions are scored exactly as given (no post-processing: they "
        "are someone's final masks). With --checkpoint C --data DIR: segment a dataset with a trained U-Net on each "
        "case's own grid, post-process (`unet.postprocess` of the checkpoint), write the masks as NIfTI in each "
        "image file's own voxel order and affine (comparable with the label array as stored, as nnU-Net writes "
        "them), and report the same metrics (the function that computes training's `test/*`, so the two agree). "
        "Every table flags outlier cases (`flag` column, red, `!`; a warning counts them): Dice < 0.5 or "
        "|RAVD| > 50 % (`liverlab/outliers.py`), and prints the per-patient median and worst case (min IoU/Dice, "
        "max ASSD/MSSD/RAVD) beside the mean; --json has `flag` per case and `mean`, `median`, `worst`, "
        "`outliers`, `n_outliers`.",
        epilog="--split auto (default): `all` when none of the dataset's patients were in the checkpoint's "
        "training or validation patients (`train_patients` in `best.pt`; older checkpoints: recomputed from their "
        "config's dataset and split settings), `test` (the checkpoint's split settings) on the checkpoint's own "
        "dataset, `unseen` (every patient it did not see) on a dataset that shares some patients. Every run "
        "prints the split and how many cases and patients were scored, and why (--json: `split`, "
        "`split_requested`, `split_notes`, `n_cases`, `n_patients`).",
    )
    p.add_argument(
        "--pred", help="predicted mask NIfTI (or a folder of them); scored as given, without post-processing"
    )
    p.add_argument("--label", help="label NIfTI (or a folder with matching case names)")
    p.add_argument(
        "--checkpoint", action="append",
        help="U-Net weights (best.pt or a checkpoint folder); repeat it for an ensemble: the mean of the models' "
        "probabilities, scored on the cases none of them trained on (--split auto), with the first one's "
        "post-processing and precision; members must share data.size, data.spacing_mm, data.mri_percentiles, "
        "unet.model.context_slices and unet.postprocess",
    )
    p.add_argument("--data", help="nnU-Net folder of MRI cases to segment")
    p.add_argument(
        "--split", default="auto", choices=["auto", "train", "val", "test", "all"],
        help="auto (default): all cases when the checkpoint never saw this dataset's patients; on its own dataset "
        "the test split (checkpoint's split settings); on one sharing some patients the unseen ones. The choice, "
        "its reason and the case / patient counts are printed on every run",
    )
    p.add_argument("--out", help="where predicted masks are written (default <checkpoint dir>/predictions)")
    p.add_argument(
        "--tta", metavar="DEGREES,SCALE",
        help="with --checkpoint: test-time augmentation, the mean over copies rotated by -D, 0, +D degrees and "
        "zoomed by 1-S, 1, 1+S (e.g. 10,0.1: 9 passes per slice), or `off`; default: the checkpoint's unet.tta",
    )
    p.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    p.set_defaults(func=_evaluate)


def _synthesize(args: argparse.Namespace) -> int:
    from liverlab.infer.synthesize import synthesize

    out = synthesize(args.checkpoint, args.data, args.out, device=args.device, progress=sys.stderr.isatty())
    print(f"synthetic MRI dataset: {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from liverlab.infer.evaluate import evaluate_files

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
    from liverlab.infer.eval_split import choose_split
    from liverlab.infer.segment import segment_dataset
    from liverlab.train import common

    choices = []
    for path in args.checkpoint:
        state = common.load_checkpoint(path, map_location="cpu")
        if "config" not in state:
            raise LiverlabError(f"{path}: not a U-Net checkpoint (no embedded config)")
        config = config_from_dict(state["config"], source=f"{path} (embedded config)")
        choices.append(choose_split(state, config, args.data, args.split))
        del state
    choice = choices[0]
    out = Path(args.out) if args.out else Path(args.checkpoint[0]).resolve().parent / "predictions"
    if len(choices) > 1:  # an ensemble is scored where every member's split choice agrees: no member saw them
        common_cases = set.intersection(*(set(c.cases) for c in choices))
        if not common_cases:
            raise LiverlabError(
                f"{args.data}: no case is in every checkpoint's --split {args.split} choice "
                f"({', '.join(f'{p}: {c.split}' for p, c in zip(args.checkpoint, choices, strict=True))}); "
                "each case must be unseen by every member"
            )
        notes = [f"member {i + 1}: {n}" for i, c in enumerate(choices) for n in c.notes]
        splits = {c.split for c in choices}
        choice = dataclasses.replace(
            choice,
            split=splits.pop() if len(splits) == 1 else "unseen", cases=sorted(common_cases),
            patients={c: choice.patients[c] for c in common_cases},
            notes=[f"ensemble of {len(choices)} checkpoints, scored on the {len(common_cases)} case(s) every "
                   "member's choice holds.", *notes],
        )
    rows = segment_dataset(args.checkpoint, args.data, out, tta=_tta_option(args.tta), cases=choice.cases)
    rows = [{**r, "patient_id": choice.patients[r["case_id"]]} for r in rows]  # only choice.cases were segmented
    print(f"predicted masks: {out}", file=sys.stderr)
    info = {"split": choice.split, "split_requested": choice.requested, "split_notes": choice.notes,
            "n_cases": len(rows), "n_patients": len({r["patient_id"] for r in rows}),
            "checkpoint_patients": choice.seen_source, "manifest_match": choice.manifest_match}
    return rows, info


def _tta_option(value: str | None) -> Any:
    """``--tta``: None (the checkpoint's unet.tta), ``off``, or ``DEGREES,SCALE`` as a ``TTAConfig``."""
    from pydantic import ValidationError

    from liverlab.config import TTAConfig

    if value is None:
        return None
    if value.strip().lower() == "off":
        return TTAConfig()
    parts = value.split(",")
    try:
        if len(parts) != 2:
            raise ValueError("two numbers")
        return TTAConfig(rotate_degrees=float(parts[0]), scale=float(parts[1]))
    except (ValueError, ValidationError) as exc:
        raise LiverlabError(
            f"--tta {value!r}: expected DEGREES,SCALE (0-45 degrees, scale 0-0.5, e.g. 10,0.1) or off"
        ) from exc


def evaluation_result(rows: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """Rows with a ``flag`` column, mean / median / worst per patient, outlier list, split fields."""
    from liverlab import outliers
    from liverlab.infer.evaluate import METRICS

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

    from liverlab.infer.evaluate import METRICS

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
