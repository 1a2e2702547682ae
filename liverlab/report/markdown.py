"""The sweep report: report.md + report.html + figures + results tables, written atomically.

``make_report`` reads the sweep's runs (``liverlab.tracking.reader``),
keeps one unit per (arm, seed) (``liverlab.report.units``), computes per-arm
statistics and paired comparisons (``liverlab.report.stats``) with their
power (``liverlab.report.power``), draws the figures
(``liverlab.report.figures``), writes everything into a temporary folder
next to ``out`` and swaps it in with renames, so a crash never leaves a
half-written report. It then logs the folder to the sweep's parent MLflow
run under ``report/``.

The page reads top down: findings (at most six lines), one comparison table,
the key figures, the EssNet vs control and per-patient sections, the other
figures, and an appendix with every number in compact tables.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from liverlab.errors import LiverlabError
from liverlab.report import appendix, arms, figures, findings, folds, power, scarcity, stats, units
from liverlab.report import patients as patient_section
from liverlab.report.html import to_html

KEY_FIGURES = ("iou_distributions", "data_scarcity")  # right after the table; the others further down
_TITLES = {"iou_distributions": "IoU per arm", "data_scarcity": "Data scarcity: IoU vs real training patients",
           "iou_vs_mixing_ratio": "IoU vs mixing ratio", "shape_preservation": "Shape preservation",
           "learning_curves": "Learning curves", "translation_panel": "Translation panel"}


def _sweep_name(name: str | None, parent_tags: dict[str, str], runs: pl.DataFrame, fallback: str) -> str:
    """Explicit name > the parent's liverlab.sweep tag > the runs' sweep tag > experiment / run id."""
    if name:
        return name
    if parent_tags.get("liverlab.sweep"):
        return parent_tags["liverlab.sweep"]
    if "sweep" in runs.columns and runs["sweep"].drop_nulls().len():
        return str(runs["sweep"].drop_nulls()[0])
    return str(fallback)


def _figure_lines(ctx: dict[str, Any], names: list[str]) -> list[str]:
    L: list[str] = []
    for name in names:
        note = ctx["figure_notes"].get(name, "")
        L += [f"### {_TITLES.get(name, name.replace('_', ' '))}" + (f" ({note})" if note else ""), "",
              f"![{name}]({ctx['figures'][name].name})", ""]
    return L


def _markdown(ctx: dict[str, Any]) -> str:
    pooled = bool(ctx.get("n_folds"))
    comps, summary = ctx["comparisons"], ctx["summary"]
    all_arms = sorted(ctx["units"]["arm"].unique().to_list())
    no_comparison = (ctx["baseline_note"] + "." if ctx["baseline"] is None else
                     f"No arm shares a seed with the baseline `{ctx['baseline']}`: nothing to pair.")
    L: list[str] = [f"# Sweep report: {ctx['name']}", ""]
    L += findings.findings_lines(comps, ctx["control"], ctx["patients"], pooled=pooled, status=ctx["status"],
                                 no_comparison=no_comparison)
    L += findings.comparison_table(summary, comps, all_arms, pooled=pooled)
    key = [n for n in KEY_FIGURES if n in ctx["figures"]]
    if key:
        L += ["## Figures", "", *_figure_lines(ctx, key)]
    L += findings.control_section(ctx["control"], pooled)
    L += patient_section.markdown_lines(ctx["patients"])
    if ctx["scarcity"] is not None:
        table, crossing = ctx["scarcity"]
        L += scarcity.markdown_lines(table, crossing, None)  # its figure is among the key figures above
    rest = [n for n in ctx["figures"] if n not in KEY_FIGURES]
    if rest or ctx["skipped"]:
        L += ["## More figures", "", *_figure_lines(ctx, rest)]
        L += [f"- {name.replace('_', ' ')}: not drawn ({why})" for name, why in ctx["skipped"].items()]
        L.append("")
    L += ["## Appendix", ""]
    L += appendix.what_was_run(ctx) + appendix.paper_form(ctx) + appendix.per_arm(summary, ctx["val_summary"])
    L += appendix.paired_table(ctx) + appendix.files(ctx["scarcity"] is not None)
    return "\n".join(L)


def _planned(planned_trials: int | None, parent_tags: dict[str, str]) -> int | None:
    """The trial count the sweep planned: the argument, else the parent run's ``liverlab.planned_trials`` tag."""
    if planned_trials is not None:
        return planned_trials
    try:
        return int(parent_tags["liverlab.planned_trials"])
    except (KeyError, ValueError):
        return None


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
    planned_trials: int | None = None,
) -> Path:
    """Write the report folder ``out`` (report.md, report.html, PNGs, results.*) and return the path of report.md.

    ``planned_trials``: how many trials the sweep meant to run (arms x seeds x samples); when fewer finished,
    the findings open with "Partial sweep: N of M". Default: the parent run's ``liverlab.planned_trials``
    tag, else only the runs' statuses (failed, killed, running) are reported.
    """
    from liverlab.report.source import sweep_runs
    from liverlab.tracking.reader import read_histories, read_per_patient, read_run_tags
    from liverlab.tracking.writer import log_artifacts_to_run

    runs, parent_run_id, parent_note = sweep_runs(uri, experiment, parent_run_id)
    where = f"experiment {experiment!r}" if experiment else f"parent run {parent_run_id}"
    if runs.height == 0:
        raise LiverlabError(f"no runs for {where} in {uri}")
    runs = units.with_arm(runs)
    finished = runs.filter(pl.col("status") == "FINISHED")
    if finished.height == 0:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(runs.group_by("status").len().iter_rows()))
        raise LiverlabError(f"no finished runs for {where} in {uri} ({counts})")
    fold_units = units.metric_values(units.select_units(finished))  # one run per (arm, seed, fold)
    patients = folds.patient_rows(read_per_patient(uri, fold_units), fold_units)
    pooled = folds.is_pooled(fold_units)
    unit_rows, fold_notes = folds.pool_folds(fold_units, patients) if pooled else (fold_units, [])
    base_arm, base_note = arms.resolve_baseline(unit_rows, baseline)
    pairs = arms.matched_baselines(sorted(unit_rows["arm"].unique().to_list()), baseline,
                                   arms.arm_synthesis(unit_rows))
    if baseline is None and len(set(pairs.values())) > 1:
        base_note = ("per arm, the real-only arm (synthesis = none) with the same values of the other factors "
                     "(e.g. the same data.train_patients): "
                     + "; ".join(f"`{a}` vs `{b}`" for a, b in sorted(pairs.items())))
    summary = stats.arm_summary(unit_rows, n_boot=n_boot, seed=seed, patients=patients if pooled else None)
    val_summary = stats.arm_summary(unit_rows.filter(pl.col("value.iou").is_null()), n_boot=n_boot, seed=seed,
                                    split="val")
    comps = power.with_power(stats.paired_comparisons(unit_rows, pairs or None, patients, pooled=pooled))
    control = power.with_power(stats.paired_comparisons(unit_rows, arms.control_pairs(unit_rows), patients,
                                                        metrics=("iou",), pooled=pooled))
    parent_tags = read_run_tags(uri, parent_run_id) if parent_run_id else {}
    planned = _planned(planned_trials, parent_tags)
    vals_runs = units.metric_values(runs)
    vals_units = units.metric_values(unit_rows)
    hist = read_histories(uri, fold_units, ["val/iou"])

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        figs, skipped, notes = figures.all_figures(
            uri, vals_runs.filter(pl.col("status") == "FINISHED"), vals_units, hist, tmp)
        scarce = None
        if scarcity.has_scarcity(unit_rows["arm"].unique().to_list()):
            table = scarcity.scarcity_table(summary, comps, pooled)
            table.write_csv(tmp / "scarcity.csv")
            try:
                figs["data_scarcity"] = scarcity.scarcity_figure(table, tmp / "data_scarcity.png")
            except figures.SkipFigure as why:
                skipped["data_scarcity"] = str(why)
            scarce = (table, scarcity.crossing(table))
        selected = set(fold_units["run_id"].to_list())
        results = vals_runs.with_columns(pl.col("run_id").is_in(list(selected)).alias("selected"))
        results.write_parquet(tmp / "results.parquet")
        iso = pl.col(pl.Datetime).dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ")  # CSV has no datetime type
        results.with_columns(iso).write_csv(tmp / "results.csv")
        summary.write_csv(tmp / "summary.csv")
        comps.write_csv(tmp / "comparisons.csv")
        sweep_name = _sweep_name(name, parent_tags, runs, experiment or parent_run_id or "sweep")
        ctx = {
            "name": sweep_name,
            "uri": uri, "experiment": experiment or (runs["experiment_id"][0]), "parent_run_id": parent_run_id,
            "parent_note": parent_note, "runs": runs, "units": unit_rows, "n_finished": finished.height,
            "summary": summary, "comparisons": comps, "control": control, "baseline": base_arm,
            "baseline_note": base_note, "parent_tags": parent_tags, "vals_units": vals_units, "figures": figs,
            "skipped": skipped, "figure_notes": notes, "n_boot": n_boot, "seed": seed, "val_summary": val_summary,
            "patients": patients, "scarcity": scarce, "n_folds": folds.expected_folds(fold_units) if pooled else 0,
            "n_fold_runs": fold_units.height, "fold_notes": fold_notes, "planned_trials": planned,
            "status": findings.status_line(runs, planned, fold_notes, vals_units["value.iou"].null_count()),
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        text = _markdown(ctx)
        (tmp / "report.md").write_text(text)
        (tmp / "report.html").write_text(to_html(text, tmp, title=f"Sweep report: {sweep_name}"))
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log_to_parent and parent_run_id:
        log_artifacts_to_run(uri, parent_run_id, out, "report")
    return out / "report.md"
