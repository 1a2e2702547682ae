"""The report's per-patient section: median and worst case beside the mean, outlier flags,
and the EssNet vs non-GAN control (``synthesis: intensity``) verdict.

Inputs are the long per-patient test rows of the unit runs
(``liverlab.report.folds.patient_rows``: run_id, arm, seed, fold, patient_id,
metric, value). One row per (run, patient) is one "per-patient result".
Outlier rules and "worst" are ``liverlab.outliers`` (Dice < 0.5 or
|RAVD| > 50 %; min IoU/Dice, max ASSD/MSSD/|RAVD|), the same as
``liverlab evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import polars as pl

from liverlab import outliers
from liverlab.report import stats

_NAMES = {"iou": "IoU", "dice": "Dice", "assd": "ASSD", "mssd": "MSSD", "ravd": "RAVD"}


def _f(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def wide(patients: pl.DataFrame) -> pl.DataFrame:
    """One row per (run, patient): run_id, arm, seed, patient_id and one column per metric."""
    rows = patients.filter(pl.col("metric").is_in(list(stats.METRICS)))
    if rows.height == 0:
        return pl.DataFrame(schema={"run_id": pl.String, "arm": pl.String, "seed": pl.Int64, "patient_id": pl.String})
    return rows.pivot(on="metric", index=["run_id", "arm", "seed", "patient_id"], values="value",
                      aggregate_function="first").sort("arm", "seed", "patient_id", nulls_last=True)


def spread_table(patients: pl.DataFrame) -> pl.DataFrame:
    """Per arm and metric over its per-patient results: n, n_inf, mean, median, worst."""
    table = wide(patients)
    out: list[dict[str, Any]] = []
    for arm in sorted(table["arm"].unique().to_list()) if table.height else []:
        group = table.filter(pl.col("arm") == arm)
        metrics = [m for m in stats.METRICS if m in group.columns]
        summary = outliers.summarize(group.select(metrics).to_dicts(), metrics)
        out += [{"arm": arm, "metric": m, **summary[m]} for m in metrics]
    schema = {"arm": pl.String, "metric": pl.String, "mean": pl.Float64, "median": pl.Float64,
              "worst": pl.Float64, "n": pl.Int64, "n_inf": pl.Int64}
    return pl.DataFrame(out, schema=schema)


def outlier_table(patients: pl.DataFrame) -> pl.DataFrame:
    """The per-patient results that break an outlier rule, with the reason in ``flag``."""
    table = wide(patients)
    if table.height == 0:
        return table.with_columns(pl.lit("").alias("flag"))
    flags = [outliers.flag(r) for r in table.to_dicts()]
    return table.with_columns(pl.Series("flag", flags, dtype=pl.String)).filter(pl.col("flag") != "")


def control_pairs(units: pl.DataFrame) -> dict[str, str]:
    """EssNet arm -> the ``synthesis: intensity`` arm with the same values of every other factor."""
    synth = stats.arm_synthesis(units)
    ctrl = [a for a, s in synth.items() if s == "intensity"]

    def rest(arm: str) -> dict[str, str]:
        return {k: v for k, v in stats.arm_factors(arm).items() if k != "synthesis"}

    return {a: hit[0] for a, s in synth.items() if s == "essnet"
            for hit in [[c for c in ctrl if rest(c) == rest(a)]] if hit}


def control_lines(units: pl.DataFrame, patients: pl.DataFrame | None, pooled: bool,
                  sentence: Callable[[dict[str, Any]], str]) -> list[str]:
    """The EssNet vs intensity-control verdict, one bullet per pair (empty when the arms are not both there)."""
    pairs = control_pairs(units)
    if not pairs:
        return []
    comps = stats.paired_comparisons(units, pairs, patients, metrics=("iou",), pooled=pooled)
    level = "patient" if pooled else "seed"
    lines = ["## EssNet vs the non-GAN control (synthesis: intensity)", "",
             "The intensity arm mixes the same CT slices and masks in at the same ratio, remapped to the real-MRI "
             "histogram without any learned network (liverlab/train/intensity_synth.py). If EssNet does not beat "
             "it, the adversarial translation adds nothing over a histogram trick on this data.", ""]
    for arm, ctrl in sorted(pairs.items()):
        rows = [r for r in comps.filter(pl.col("arm") == arm).iter_rows(named=True) if r["level"] == level]
        if not rows:
            lines.append(f"- `{arm}` vs `{ctrl}`: no shared seeds, no paired comparison.")
            continue
        r = rows[0]
        lo, hi = r["t_lo"], r["t_hi"]
        if lo is None or math.isnan(lo):
            verdict = "too few paired results to say whether EssNet beats the intensity control"
        elif lo > 0:
            verdict = "EssNet beats the intensity control (the 95 % interval of the difference is above 0)"
        elif hi < 0:
            verdict = "**EssNet does not beat the intensity control: it is worse** (the 95 % interval is below 0)"
        else:
            verdict = "**EssNet does not beat the intensity control** (the 95 % interval of the difference includes 0)"
        lines.append(f"- **{stats.arm_label(arm)} vs {stats.arm_label(ctrl)}**: {verdict}; {sentence(r)} "
                     f"(`{arm}` vs `{ctrl}`)")
    return lines + [""]


def markdown_lines(patients: pl.DataFrame | None) -> list[str]:
    """'## Per-patient results': mean / median / worst per arm, then the outlier list."""
    L = ["## Per-patient results", ""]
    if patients is None or patients.height == 0:
        return L + ["No per-patient tables were logged (`per_patient.parquet`): no per-patient median, worst case "
                    "or outlier flags.", ""]
    spread = spread_table(patients)
    L += ["Over every (run, test patient) result of the selected units. Worst case: min IoU/Dice, "
          "max ASSD/MSSD/RAVD.", "",
          "| arm | metric | results | mean | median | worst |", "|---|---|---|---|---|---|"]
    for r in spread.iter_rows(named=True):
        n = f"{r['n']}" + (f" (+{r['n_inf']} inf)" if r["n_inf"] else "")
        L.append(f"| {stats.arm_label(r['arm'])} | {_NAMES.get(r['metric'], r['metric'])} | {n} | {_f(r['mean'])} | "
                 f"{_f(r['median'])} | {_f(r['worst'])} |")
    flagged = outlier_table(patients)
    total = wide(patients).height
    L += ["", f"### Outliers ({outliers.rule_text()})", ""]
    if flagged.height == 0:
        return L + [f"None: no per-patient result of the {total} breaks a rule.", ""]
    L.append(f"**{flagged.height} of {total} per-patient results are outliers**; a mean hides them:")
    L += ["", "| arm | seed | run | patient | Dice | RAVD | why |", "|---|---|---|---|---|---|---|"]
    for r in flagged.iter_rows(named=True):
        L.append(f"| {stats.arm_label(r['arm'])} | {r['seed']} | `{r['run_id'][:8]}` | {r['patient_id']} | "
                 f"{_f(r.get('dice'))} | {_f(r.get('ravd'))} | {r['flag']} |")
    return L + [""]
