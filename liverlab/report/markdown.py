"""The sweep report: report.md + figures + results tables, written atomically.

``make_report`` reads the sweep's runs (``liverlab.tracking.reader``),
computes per-arm statistics and paired comparisons
(``liverlab.report.stats``), draws the figures (``liverlab.report.figures``),
writes everything into a temporary folder next to ``out`` and swaps it in
with renames, so a crash never leaves a half-written report. It then logs
the folder to the sweep's parent MLflow run under ``report/``.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from liverlab.errors import LiverlabError
from liverlab.report import figures, folds, scarcity, stats
from liverlab.report import patients as patient_section

_NAMES = {"iou": "IoU", "dice": "Dice", "assd": "ASSD", "mssd": "MSSD", "ravd": "RAVD"}


def _f(x: Any, nd: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _p(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _signed(x: Any, points: bool = True) -> str:
    """IoU/Dice points with 2 decimals; other units with 3 significant digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.2f}" if points else f"{x:+.3g}"


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


def _sweep_name(name: str | None, parent_tags: dict[str, str], runs: pl.DataFrame, fallback: str) -> str:
    """Explicit name > the parent's liverlab.sweep tag > the runs' sweep tag > experiment / run id."""
    if name:
        return name
    if parent_tags.get("liverlab.sweep"):
        return parent_tags["liverlab.sweep"]
    if "sweep" in runs.columns and runs["sweep"].drop_nulls().len():
        return str(runs["sweep"].drop_nulls()[0])
    return str(fallback)


def _comparison_sentence(row: dict[str, Any]) -> str:
    """'+2.40 IoU points, 95 % CI [+0.98, +3.82], paired t p = 0.00926, ..., n = 5 seeds'."""
    what = _NAMES.get(row["metric"], row["metric"])
    pts = row["unit"] == "points"
    if pts:
        amount = f"{_signed(row['mean_diff'])} {what} points"
    elif row["metric"] in ("assd", "mssd"):
        amount = f"{_signed(row['mean_diff'], False)} mm {what}"
    else:
        amount = f"{_signed(row['mean_diff'], False)} {what}"
    if row["level"] == "seed":
        level = "seed" if row["n"] == 1 else "seeds"
    elif row["level"] == "patient":
        level = "patient" if row["n"] == 1 else "patients"
    else:
        level = "(seed, patient) pair" if row["n"] == 1 else "(seed, patient) pairs"
    text = (
        f"{amount}, 95 % CI [{_signed(row['t_lo'], pts)}, {_signed(row['t_hi'], pts)}], "
        f"paired t p = {_p(row['t_p'])}, Wilcoxon p = {_p(row['w_p'])}, d_z = {_f(row['d_z'], 2)}, "
        f"n = {row['n']} {level}"
    )
    return text + (f" ({row['note']})" if row["note"] else "")


def _markdown(ctx: dict[str, Any]) -> str:
    runs, units, summary, comps = ctx["runs"], ctx["units"], ctx["summary"], ctx["comparisons"]
    arms = sorted(units["arm"].unique().to_list())
    counts = dict(runs.group_by("status").len().iter_rows())
    seeds = sorted(units["seed"].drop_nulls().unique().to_list())
    L: list[str] = [f"# Sweep report: {ctx['name']}", ""]
    L += ["## What was run", ""]
    L.append(f"- Sweep `{ctx['name']}`; tracking store `{ctx['uri']}`; experiment `{ctx['experiment']}`; "
             f"parent run `{ctx['parent_run_id'] or 'none'}`"
             + (f" ({ctx['parent_note']})" if ctx["parent_note"] else ""))
    L.append(f"- Runs: {runs.height} (" + ", ".join(f"{counts[s]} {s.lower()}" for s in sorted(counts)) + "); "
             f"statistics use the {ctx['n_finished']} finished runs, one per (arm, seed"
             + (", fold" if ctx.get("n_folds") else "") + f"): {ctx['n_fold_runs']} "
             + ("fold runs" if ctx.get("n_folds") else "units")
             + (f" ({ctx['n_finished'] - ctx['n_fold_runs']} extra Optuna samples set aside: "
                f"the best by `{stats.OBJECTIVE}` was kept per arm and seed)"
                if ctx["n_finished"] > ctx["n_fold_runs"] else ""))
    if ctx.get("n_folds"):
        L.append(f"- **Pooled over {ctx['n_folds']} folds** (`data.split.fold` is an arm factor): the fold is not "
                 "an arm; each (arm, seed) unit pools the per-patient test rows of its folds, so every patient is "
                 f"tested once per seed ({ctx['n_fold_runs']} fold runs -> {units.height} units); intervals are over "
                 "patients (each patient's mean over seeds)")
        for note in ctx["fold_notes"]:
            L.append(f"  - **warning**: {note}")
    L.append(f"- Arms ({len(arms)}): " + "; ".join(
        f"`{a}` = {stats.arm_label(a)} (n = {units.filter(pl.col('arm') == a).height})" for a in arms))
    L.append(f"- Seeds ({len(seeds)}): {', '.join(map(str, seeds)) or 'none'}")
    L.append(f"- Git commit: {_unique(units, 'git_commit', ctx['parent_tags'], 'liverlab.git_commit')} "
             f"(dirty: {_unique(units, 'git_dirty', ctx['parent_tags'], 'liverlab.git_dirty')}); "
             f"data manifest hash: {_unique(units, 'manifest_hash', ctx['parent_tags'], 'liverlab.manifest_hash')}; "
             f"search space: {_unique(units, 'space_file', ctx['parent_tags'], 'liverlab.space_file')}")
    L.append(f"- Baseline: {ctx['baseline_note']}")
    no_test = ctx["vals_units"].filter(pl.col("value.iou").is_null())
    L.append("- Metric source: test metrics only (`metric.test/<name>`, logged once after training); a column "
             "that says test never holds validation values" + (
                 f". **{no_test.height} unit(s) have no test metrics**: missing in the test tables, their "
                 "validation values are summarised separately under 'Validation only'" if no_test.height else ""))
    L.append(f"- Intervals: 95 %, Student t and percentile bootstrap ({ctx['n_boot']} resamples, seed {ctx['seed']})")
    L.append(f"- Generated {ctx['generated']}")
    L += ["", "## Results in the paper's form", "", "| training data | images | Dice | IoU |", "|---|---|---|---|"]
    by = {(r["arm"], r["metric"]): r for r in summary.iter_rows(named=True)}
    vals = ctx["vals_units"]
    for a in arms:
        L.append(f"| {stats.arm_label(a)} | {_images(vals.filter(pl.col('arm') == a))} | "
                 f"{_f(by.get((a, 'dice'), {}).get('mean'))} | {_f(by.get((a, 'iou'), {}).get('mean'))} |")
    L += ["", "Means over the n units (seeds) of each arm; intervals below.", ""]
    L += ["## Per-arm results", "",
          "| arm | metric | source | n | mean | SD | 95 % t CI | 95 % bootstrap CI |",
          "|---|---|---|---|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        n_cell = f"{r['n']}" + (" patients" if r.get("over") == "patient" else "") + (
            f" (+{r['n_inf']} inf)" if r["n_inf"] else "")
        L.append(f"| {stats.arm_label(r['arm'])} | {_NAMES.get(r['metric'], r['metric'])} | {r['source']} | {n_cell} | "
                 f"{_f(r['mean'])} | {_f(r['sd'])} | [{_f(r['t_lo'])}, {_f(r['t_hi'])}] | "
                 f"[{_f(r['boot_lo'])}, {_f(r['boot_hi'])}] |")
    if summary["n_inf"].sum():
        L += ["", "`+k inf`: k units had an infinite value (a surface distance or RAVD against an empty mask); "
              "they are left out of the mean and intervals, and out of the paired differences."]
    val_summary = ctx["val_summary"]
    if val_summary.height:
        L += ["", "## Validation only (units without test metrics)", "",
              "Not test results: `best.val/<name>` of the units that logged no test metrics.", "",
              "| arm | metric | source | n | mean | SD | 95 % t CI |", "|---|---|---|---|---|---|---|"]
        for r in val_summary.iter_rows(named=True):
            L.append(f"| {stats.arm_label(r['arm'])} | {_NAMES.get(r['metric'], r['metric'])} | {r['source']} | "
                     f"{r['n']} | {_f(r['mean'])} | {_f(r['sd'])} | [{_f(r['t_lo'])}, {_f(r['t_hi'])}] |")
    L += ["", "## Paired comparisons against the baseline", ""]
    if ctx["baseline"] is None:
        L.append(ctx["baseline_note"] + ".")
    elif comps.height == 0:
        L.append(f"No arm shares a seed with the baseline `{ctx['baseline']}`: nothing to pair.")
    else:
        matched = len(set(comps["baseline"].to_list())) > 1
        against = ("its own baseline (the real-only arm with the same values of the other factors, named per arm)"
                   if matched else f"baseline `{ctx['baseline']}` ({stats.arm_label(ctx['baseline'])})")
        L.append(f"Differences are arm minus {against}, "
                 "paired by seed (and by seed and test patient where per-patient tables exist). "
                 "IoU and Dice differences are in points (x100); ASSD/MSSD in mm, RAVD in its logged unit. " + (
                     "Pooled k-fold sweep: the patient-level test (each patient's difference averaged over seeds, "
                     "every patient tested once per seed) is the primary one; (seed, patient) pairs are not "
                     "independent across seeds, so their p-values are optimistic." if ctx.get("n_folds") else
                     "The seed-level test is the primary one: (seed, patient) pairs reuse the same test patients "
                     "across seeds, so they are not independent and their p-values are optimistic."))
        L.append("")
        for arm in sorted(comps["arm"].unique().to_list()):
            rows = list(comps.filter(pl.col("arm") == arm).iter_rows(named=True))
            # The headline (IoU over seeds) goes on the arm's own line; the rest below it.
            primary = "patient" if ctx.get("n_folds") else "seed"
            rows.sort(key=lambda r: (r["metric"] != "iou" or r["level"] != primary))
            head = _comparison_sentence(rows[0])
            base = rows[0]["baseline"]
            L.append(f"- **{stats.arm_label(arm)} vs {stats.arm_label(base)}**: {head} (`{arm}` vs `{base}`)")
            for r in rows[1:]:
                L.append(f"  - {_comparison_sentence(r)}")
    L += [""] + patient_section.control_lines(units, ctx.get("patients"), bool(ctx.get("n_folds")), _comparison_sentence)
    L += patient_section.markdown_lines(ctx.get("patients"))
    if ctx["scarcity"] is not None:
        L += [""] + scarcity.markdown_lines(*ctx["scarcity"])
    L += ["", "## Figures", ""]
    for name, path in ctx["figures"].items():
        note = ctx["figure_notes"].get(name, "")
        L += [f"### {name.replace('_', ' ')}" + (f" ({note})" if note else ""), "", f"![{name}]({path.name})", ""]
    for name, why in ctx["skipped"].items():
        L.append(f"- {name.replace('_', ' ')}: not drawn ({why})")
    L += ["", "## Files", "",
          "- `results.parquet`, `results.csv`: one row per run (all statuses; `selected` marks the units used above)",
          "- `summary.csv`: the per-arm table; `comparisons.csv`: the paired comparisons"]
    if ctx["scarcity"] is not None:
        L.append("- `scarcity.csv`: the data-scarcity table (IoU per arm and number of real training patients)")
    L.append("")
    return "\n".join(L)


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames (same filesystem), removing the old folder after."""
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def make_report(
    uri: str,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    baseline: str | None = None,
    out: str | Path = "report",
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    log_to_parent: bool = True,
    name: str | None = None,
) -> Path:
    """Write the report folder ``out`` (report.md, PNGs, results.*) and return the path of report.md."""
    from liverlab.report.source import sweep_runs
    from liverlab.tracking.reader import read_histories, read_per_patient, read_run_tags
    from liverlab.tracking.writer import log_artifacts_to_run

    runs, parent_run_id, parent_note = sweep_runs(uri, experiment, parent_run_id)
    where = f"experiment {experiment!r}" if experiment else f"parent run {parent_run_id}"
    if runs.height == 0:
        raise LiverlabError(f"no runs for {where} in {uri}")
    runs = stats.with_arm(runs)
    finished = runs.filter(pl.col("status") == "FINISHED")
    if finished.height == 0:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(runs.group_by("status").len().iter_rows()))
        raise LiverlabError(f"no finished runs for {where} in {uri} ({counts})")
    fold_units = stats.metric_values(stats.select_units(finished))  # one run per (arm, seed, fold)
    patients = folds.patient_rows(read_per_patient(uri, fold_units), fold_units)
    pooled = folds.is_pooled(fold_units)
    units, fold_notes = folds.pool_folds(fold_units, patients) if pooled else (fold_units, [])
    base_arm, base_note = stats.resolve_baseline(units, baseline)
    pairs = stats.matched_baselines(sorted(units["arm"].unique().to_list()), baseline, stats.arm_synthesis(units))
    if baseline is None and len(set(pairs.values())) > 1:
        base_note = ("per arm, the real-only arm (synthesis = none) with the same values of the other factors "
                     "(e.g. the same data.train_patients): " + "; ".join(f"`{a}` vs `{b}`" for a, b in sorted(pairs.items())))
    summary = stats.arm_summary(units, n_boot=n_boot, seed=seed, patients=patients if pooled else None)
    val_summary = stats.arm_summary(units.filter(pl.col("value.iou").is_null()), n_boot=n_boot, seed=seed, split="val")
    comps = stats.paired_comparisons(units, pairs or None, patients, pooled=pooled)
    parent_tags = read_run_tags(uri, parent_run_id) if parent_run_id else {}
    vals_runs = stats.metric_values(runs)
    vals_units = stats.metric_values(units)
    hist = read_histories(uri, fold_units, ["val/iou"])

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        figs, skipped, notes = figures.all_figures(
            uri, vals_runs.filter(pl.col("status") == "FINISHED"), vals_units, hist, tmp)
        scarce = None
        if scarcity.has_scarcity(units["arm"].unique().to_list()):
            table = scarcity.scarcity_table(summary, comps, pooled)
            table.write_csv(tmp / "scarcity.csv")
            try:
                fig_name: str | None = scarcity.scarcity_figure(table, tmp / "data_scarcity.png").name
            except figures.SkipFigure as why:
                fig_name, skipped["data_scarcity"] = None, str(why)
            scarce = (table, scarcity.crossing(table), fig_name)
        selected = set(fold_units["run_id"].to_list())
        results = vals_runs.with_columns(pl.col("run_id").is_in(list(selected)).alias("selected"))
        results.write_parquet(tmp / "results.parquet")
        iso = pl.col(pl.Datetime).dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ")  # CSV has no datetime type
        results.with_columns(iso).write_csv(tmp / "results.csv")
        summary.write_csv(tmp / "summary.csv")
        comps.write_csv(tmp / "comparisons.csv")
        ctx = {
            "name": _sweep_name(name, parent_tags, runs, experiment or parent_run_id or "sweep"),
            "uri": uri, "experiment": experiment or (runs["experiment_id"][0]), "parent_run_id": parent_run_id,
            "parent_note": parent_note, "runs": runs, "units": units, "n_finished": finished.height,
            "summary": summary, "comparisons": comps, "baseline": base_arm, "baseline_note": base_note,
            "parent_tags": parent_tags, "vals_units": vals_units, "figures": figs, "skipped": skipped,
            "figure_notes": notes, "n_boot": n_boot, "seed": seed, "val_summary": val_summary,
            "patients": patients, "scarcity": scarce, "n_folds": folds.expected_folds(fold_units) if pooled else 0,
            "n_fold_runs": fold_units.height, "fold_notes": fold_notes,
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        (tmp / "report.md").write_text(_markdown(ctx))
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log_to_parent and parent_run_id:
        log_artifacts_to_run(uri, parent_run_id, out, "report")
    return out / "report.md"
