"""The report's per-patient section: median and worst case beside the mean, outlier flags,
and the worst patient of the sweep (for the findings).

Inputs are the long per-patient test rows of the unit runs
(``liverlab.report.folds.patient_rows``: run_id, arm, seed, fold, patient_id,
metric, value). One row per (run, patient) is one "per-patient result".
Outlier rules and "worst" are ``liverlab.outliers`` (Dice < 0.5 or
|RAVD| > 50 %; min IoU/Dice, max ASSD/MSSD/|RAVD|), the same as
``liverlab evaluate``.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from liverlab import outliers
from liverlab.report import fmt
from liverlab.report.arms import arm_label
from liverlab.report.units import METRICS


def wide(patients: pl.DataFrame) -> pl.DataFrame:
    """One row per (run, patient): run_id, arm, seed, patient_id and one column per metric."""
    rows = patients.filter(pl.col("metric").is_in(list(METRICS)))
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
        metrics = [m for m in METRICS if m in group.columns]
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


def worst_patient(patients: pl.DataFrame | None) -> dict[str, Any] | None:
    """The patient with the lowest mean test IoU over all its per-patient results (every arm and seed),
    and the single lowest result: {patient_id, mean, n, low, low_arm, low_seed}; None without IoU rows."""
    if patients is None or patients.height == 0:
        return None
    iou = patients.filter((pl.col("metric") == "iou") & pl.col("value").is_not_null() & pl.col("value").is_not_nan())
    if iou.height == 0:
        return None
    per = iou.group_by("patient_id").agg(pl.col("value").mean().alias("mean"), pl.len().alias("n"))
    worst = per.sort("mean", "patient_id").row(0, named=True)
    low = iou.filter(pl.col("patient_id") == worst["patient_id"]).sort("value", "arm", "seed").row(0, named=True)
    return {"patient_id": worst["patient_id"], "mean": worst["mean"], "n": worst["n"], "low": low["value"],
            "low_arm": low["arm"], "low_seed": low["seed"]}


def markdown_lines(patients: pl.DataFrame | None) -> list[str]:
    """'## Per-patient results': mean / median / worst per arm, then the outlier list."""
    L = ["## Per-patient results", ""]
    if patients is None or patients.height == 0:
        return L + ["No per-patient tables were logged (`per_patient.parquet`): no per-patient median, worst case "
                    "or outlier flags.", ""]
    spread = spread_table(patients)
    metrics = [m for m in METRICS if m in set(spread["metric"].to_list())]
    unit = {"assd": " (mm)", "mssd": " (mm)"}
    L += ["Over every (run, test patient) result of the selected units; each cell is mean / median / worst "
          "(worst: min IoU/Dice, max ASSD/MSSD/RAVD).", "",
          "| arm | results | " + " | ".join(fmt.NAMES.get(m, m) + unit.get(m, "") for m in metrics) + " |",
          "|---|---|" + "---|" * len(metrics)]
    for arm in sorted(spread["arm"].unique().to_list()):
        by = {r["metric"]: r for r in spread.filter(pl.col("arm") == arm).iter_rows(named=True)}
        cells = [f"{fmt.num(by[m]['mean'])} / {fmt.num(by[m]['median'])} / {fmt.num(by[m]['worst'])}"
                 + (f" (+{by[m]['n_inf']} inf)" if by[m]["n_inf"] else "") if m in by else "n/a" for m in metrics]
        n = max(r["n"] + r["n_inf"] for r in by.values())
        L.append(f"| {arm_label(arm)} | {n} | " + " | ".join(cells) + " |")
    flagged = outlier_table(patients)
    total = wide(patients).height
    L += ["", f"### Outliers ({outliers.rule_text()})", ""]
    if flagged.height == 0:
        return L + [f"None: no per-patient result of the {total} breaks a rule.", ""]
    L.append(f"**{flagged.height} of {total} per-patient results are outliers**; a mean hides them:")
    L += ["", "| arm | seed | run | patient | Dice | RAVD | why |", "|---|---|---|---|---|---|---|"]
    for r in flagged.iter_rows(named=True):
        L.append(f"| {arm_label(r['arm'])} | {r['seed']} | `{r['run_id'][:8]}` | {r['patient_id']} | "
                 f"{fmt.num(r.get('dice'))} | {fmt.num(r.get('ravd'))} | {fmt.cell(r['flag'])} |")
    return L + [""]
