"""The report's appendix: what was run, the paper-form table, every metric per arm, every paired comparison
(all metrics, seeds and (seed, patient) pairs) as compact tables, and the list of files.

Each function returns Markdown lines; ``ctx`` is the dictionary ``markdown.make_report`` builds.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from liverlab.report import fmt
from liverlab.report.arms import arm_label
from liverlab.report.units import OBJECTIVE

_LEVEL = {"seed": "seeds", "patient": "patients", "seed x patient": "(seed, patient) pairs"}
_UNIT = {"iou": "points", "dice": "points", "assd": "mm", "mssd": "mm"}


def _images(group: pl.DataFrame) -> str:
    """'350 real + 714 synthetic' from logged data/n_real, data/n_synthetic (median over runs)."""
    parts = []
    for key, word in (("data/n_real", "real"), ("data/n_synthetic", "synthetic")):
        col = next((c for c in (f"metric.{key}", f"param.{key}") if c in group.columns), None)
        if col is None:
            continue
        v = group[col].cast(pl.Float64, strict=False).drop_nulls()
        if v.len() and not (word == "synthetic" and v.median() == 0):
            parts.append(f"{int(round(v.median()))} {word}")
    return " + ".join(parts) or "n/a"


def _unique(runs: pl.DataFrame, col: str, parent_tags: dict[str, str], tag: str) -> str:
    vals = sorted({str(v).lower() if isinstance(v, bool) else str(v) for v in runs[col].drop_nulls().to_list()}
                  if col in runs.columns else [])
    if not vals and tag in parent_tags:
        vals = [parent_tags[tag]]
    return ", ".join(f"`{v}`" for v in vals) or "unknown"


def what_was_run(ctx: dict[str, Any]) -> list[str]:
    """'### What was run': store, runs by status, units, arms, seeds, provenance, baseline, metric source."""
    runs, units = ctx["runs"], ctx["units"]
    arms = sorted(units["arm"].unique().to_list())
    counts = dict(runs.group_by("status").len().iter_rows())
    seeds = sorted(units["seed"].drop_nulls().unique().to_list())
    L = ["### What was run", ""]
    L.append(f"- Sweep `{ctx['name']}`; tracking store `{ctx['uri']}`; experiment `{ctx['experiment']}`; "
             f"parent run `{ctx['parent_run_id'] or 'none'}`"
             + (f" ({ctx['parent_note']})" if ctx["parent_note"] else ""))
    planned = f" of {ctx['planned_trials']} planned" if ctx.get("planned_trials") is not None else ""
    L.append(f"- Runs: {runs.height}{planned} (" + ", ".join(f"{counts[s]} {s.lower()}" for s in sorted(counts)) + "); "
             f"statistics use the {ctx['n_finished']} finished runs, one per (arm, seed"
             + (", fold" if ctx.get("n_folds") else "") + f"): {ctx['n_fold_runs']} "
             + ("fold runs" if ctx.get("n_folds") else "units")
             + (f" ({ctx['n_finished'] - ctx['n_fold_runs']} extra Optuna samples set aside: "
                f"the best by `{OBJECTIVE}` was kept per arm and seed)"
                if ctx["n_finished"] > ctx["n_fold_runs"] else ""))
    if ctx.get("n_folds"):
        L.append(f"- **Pooled over {ctx['n_folds']} folds** (`data.split.fold` is an arm factor): the fold is not "
                 "an arm; each (arm, seed) unit pools the per-patient test rows of its folds, so every patient is "
                 f"tested once per seed ({ctx['n_fold_runs']} fold runs -> {units.height} units); intervals are over "
                 "patients (each patient's mean over seeds)")
        for note in ctx["fold_notes"]:
            L.append(f"  - **warning**: {note}")
    L.append(f"- Arms ({len(arms)}): " + "; ".join(
        f"`{a}` = {arm_label(a)} (n = {units.filter(pl.col('arm') == a).height})" for a in arms))
    L.append(f"- Seeds ({len(seeds)}): {', '.join(map(str, seeds)) or 'none'}")
    tags = ctx["parent_tags"]
    L.append(f"- Git commit: {_unique(units, 'git_commit', tags, 'liverlab.git_commit')} "
             f"(dirty: {_unique(units, 'git_dirty', tags, 'liverlab.git_dirty')}); "
             f"data manifest hash: {_unique(units, 'manifest_hash', tags, 'liverlab.manifest_hash')}; "
             f"search space: {_unique(units, 'space_file', tags, 'liverlab.space_file')}")
    L.append(f"- Baseline: {ctx['baseline_note']}")
    no_test = ctx["vals_units"].filter(pl.col("value.iou").is_null())
    L.append("- Metric source: test metrics only (`metric.test/<name>`, logged once after training); a column "
             "that says test never holds validation values" + (
                 f". **{no_test.height} unit(s) have no test metrics**: missing in the test tables, their "
                 "validation values are summarised separately under 'Validation only'" if no_test.height else ""))
    L.append(f"- Intervals: 95 %, Student t and percentile bootstrap ({ctx['n_boot']} resamples, seed {ctx['seed']})")
    L.append(f"- Generated {ctx['generated']}")
    return L + [""]


def paper_form(ctx: dict[str, Any]) -> list[str]:
    """'### Results in the paper's form': training data, images, Dice, IoU (means)."""
    by = {(r["arm"], r["metric"]): r for r in ctx["summary"].iter_rows(named=True)}
    vals = ctx["vals_units"]
    L = ["### Results in the paper's form", "", "| training data | images | Dice | IoU |", "|---|---|---|---|"]
    for a in sorted(ctx["units"]["arm"].unique().to_list()):
        L.append(f"| {arm_label(a)} | {_images(vals.filter(pl.col('arm') == a))} | "
                 f"{fmt.num(by.get((a, 'dice'), {}).get('mean'))} | {fmt.num(by.get((a, 'iou'), {}).get('mean'))} |")
    return L + ["", "Means over the n units (seeds) of each arm.", ""]


def per_arm(summary: pl.DataFrame, val_summary: pl.DataFrame) -> list[str]:
    """'### Per-arm results, every metric' (test), then 'Validation only' when some units lack test metrics."""
    L = ["### Per-arm results, every metric", "",
         "| arm | metric | source | n | mean | SD | 95 % t CI | 95 % bootstrap CI |",
         "|---|---|---|---|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        n_cell = f"{r['n']}" + (" patients" if r.get("over") == "patient" else "") + (
            f" (+{r['n_inf']} inf)" if r["n_inf"] else "")
        L.append(f"| {arm_label(r['arm'])} | {fmt.NAMES.get(r['metric'], r['metric'])} | {r['source']} | {n_cell} | "
                 f"{fmt.num(r['mean'])} | {fmt.num(r['sd'])} | [{fmt.num(r['t_lo'])}, {fmt.num(r['t_hi'])}] | "
                 f"[{fmt.num(r['boot_lo'])}, {fmt.num(r['boot_hi'])}] |")
    if summary["n_inf"].sum():
        L += ["", "`+k inf`: k units had an infinite value (a surface distance or RAVD against an empty mask); "
              "they are left out of the mean and intervals, and out of the paired differences."]
    if val_summary.height:
        L += ["", "### Validation only (units without test metrics)", "",
              "Not test results: `best.val/<name>` of the units that logged no test metrics.", "",
              "| arm | metric | source | n | mean | SD | 95 % t CI |", "|---|---|---|---|---|---|---|"]
        for r in val_summary.iter_rows(named=True):
            L.append(f"| {arm_label(r['arm'])} | {fmt.NAMES.get(r['metric'], r['metric'])} | {r['source']} | "
                     f"{r['n']} | {fmt.num(r['mean'])} | {fmt.num(r['sd'])} | "
                     f"[{fmt.num(r['t_lo'])}, {fmt.num(r['t_hi'])}] |")
    return L + [""]


def paired_table(ctx: dict[str, Any]) -> list[str]:
    """'### Paired comparisons, every metric and pairing': one row per (arm, metric, level)."""
    comps = ctx["comparisons"]
    L = ["### Paired comparisons, every metric and pairing", ""]
    if ctx["baseline"] is None:
        return L + [ctx["baseline_note"] + ".", ""]
    if comps.height == 0:
        return L + [f"No arm shares a seed with the baseline `{ctx['baseline']}`: nothing to pair.", ""]
    primary = "patient" if ctx.get("n_folds") else "seed"
    L.append("Arm minus its baseline; IoU and Dice in points (x100), ASSD/MSSD in mm, RAVD in its logged unit. "
             + (f"The {primary}-level test is the primary one" + (
                 " (pooled k-fold: each patient's difference averaged over seeds, every patient tested once per "
                 "seed)" if primary == "patient" else "")
                + ": (seed, patient) pairs reuse the same test patients across seeds, so they are not independent "
                  "and their p-values are optimistic; they show how consistent a difference is across patients. "
                  "Detectable at 80 % power: as in the comparison table, for the independent levels only."))
    L += ["", "| arm | vs | metric | pairing | n | Δ [95 % CI] | paired t p | Wilcoxon p | d_z "
          "| detectable at 80 % power | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"iou": 0, "dice": 1, "assd": 2, "mssd": 3, "ravd": 4}
    rows = sorted(comps.iter_rows(named=True), key=lambda r: (r["arm"], order.get(r["metric"], 9), r["level"]))
    for r in rows:
        pts = r["unit"] == "points"
        unit = _UNIT.get(r["metric"])
        mde = "" if fmt.missing(r.get("mde")) else f"±{r['mde']:.2f}" if pts else f"±{r['mde']:.3g}"
        note = "; ".join(n for n in (r["note"], r.get("power_note") if r["level"] != "seed x patient" else "") if n)
        L.append(f"| {arm_label(r['arm'])} | {arm_label(r['baseline'])} | {fmt.NAMES.get(r['metric'], r['metric'])}"
                 + (f" ({unit})" if unit else "") + f" | {_LEVEL.get(r['level'], r['level'])} | {r['n']} | "
                 f"{fmt.signed(r['mean_diff'], pts)} {fmt.interval(r['t_lo'], r['t_hi'], pts)} | "
                 f"{fmt.pval(r['t_p'])} | "
                 f"{fmt.pval(r['w_p'])} | {fmt.num(r['d_z'], 2)} | {mde} | {note} |")
    arms = sorted({(r["arm"], r["baseline"]) for r in rows})
    L += ["", "Arms: " + "; ".join(f"{arm_label(a)} = `{a}` vs `{b}`" for a, b in arms) + "."]
    return L + [""]


def files(has_scarcity: bool) -> list[str]:
    """'### Files'."""
    L = ["### Files", "",
         "- `report.md`; `report.html`: the same report as one self-contained page (figures embedded)",
         "- `results.parquet`, `results.csv`: one row per run (all statuses; `selected` marks the units used above)",
         "- `summary.csv`: the per-arm table; `comparisons.csv`: the paired comparisons (with `mde`, `n_needed`)"]
    if has_scarcity:
        L.append("- `scarcity.csv`: the data-scarcity table (IoU per arm and number of real training patients)")
    return L + [""]
