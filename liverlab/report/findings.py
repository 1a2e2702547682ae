"""The front of the report: the findings in at most six lines, and one comparison table.

Everything here is written from the numbers of the other modules: the
primary paired comparison of each arm (``stats.paired_comparisons`` at the
seed level, or the patient level of a pooled k-fold sweep, with
``power.with_power`` columns), the per-arm summary, the EssNet vs
intensity-control comparisons and the per-patient rows.

The verdict of a comparison comes from its 95 % t interval of the IoU
difference: **better** when the interval is above 0, **worse** when it is
below 0, otherwise **no detectable difference at n = ...** (which is not
"no difference": the power columns say how large a difference could have
gone unseen).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from liverlab import outliers
from liverlab.report import fmt
from liverlab.report.arms import arm_factors, arm_label
from liverlab.report.patients import outlier_table, wide, worst_patient
from liverlab.report.power import PAPER_GAIN

MAX_LINES = 6


def primary_level(pooled: bool) -> str:
    """The comparison level the verdicts use: seeds, or patients when k-fold folds were pooled."""
    return "patient" if pooled else "seed"


def verdict(row: dict[str, Any]) -> str:
    """'better', 'worse' or 'no detectable difference at n = 5 seeds', from the 95 % t interval."""
    over = row["level"]
    units = fmt.count(int(row["n"]), over, f"{over}s")
    if fmt.missing(row["t_lo"]):
        return f"no detectable difference at n = {units} (too few for an interval)"
    if row["t_lo"] > 0:
        return "better"
    if row["t_hi"] < 0:
        return "worse"
    return f"no detectable difference at n = {units}"


def primary_rows(comps: pl.DataFrame, pooled: bool, metric: str = "iou") -> dict[str, dict[str, Any]]:
    """Arm -> its primary comparison row for ``metric``."""
    level = primary_level(pooled)
    hit = comps.filter((pl.col("metric") == metric) & (pl.col("level") == level))
    return {r["arm"]: r for r in hit.iter_rows(named=True)}


def _diff(row: dict[str, Any]) -> str:
    return f"{fmt.signed(row['mean_diff'])} {fmt.interval(row['t_lo'], row['t_hi'])}"


# ----------------------------------------------------------------------------- findings


def status_line(runs: pl.DataFrame, planned_trials: int | None, fold_notes: Sequence[str], n_no_test: int) -> str:
    """'' when the sweep is complete and every trial finished; else what is missing, in one line."""
    counts = dict(runs.group_by("status").len().iter_rows())
    finished = counts.get("FINISHED", 0)
    other = {s: n for s, n in sorted(counts.items()) if s != "FINISHED"}
    not_run = max(0, (planned_trials or 0) - runs.height)
    parts: list[str] = [f"{n} {s.lower()}" for s, n in other.items()] + ([f"{not_run} not run"] if not_run else [])
    head = ""
    if planned_trials is not None and finished < planned_trials:
        head = f"**Partial sweep: {finished} of {planned_trials} planned trials finished**"
    elif other:
        head = f"**{sum(other.values())} of {runs.height} trials did not finish**"
    bad = runs.filter(pl.col("status") != "FINISHED").sort("arm", "seed", nulls_last=True)
    which = [f"`{r['arm']}` seed {r['seed']}" for r in bad.head(3).iter_rows(named=True)]
    if bad.height > 3:
        which.append(f"{bad.height - 3} more")
    sentences: list[str] = []
    if head:
        sentences.append(f"{head} ({', '.join(parts)}" + (f": {'; '.join(which)}" if which else "")
                         + f"); the numbers below use the {finished} finished.")
    extra = []
    if fold_notes:
        extra.append(f"**{len(fold_notes)} k-fold coverage warning(s)** (see What was run)")
    if n_no_test:
        extra.append(f"**{n_no_test} unit(s) logged no test metrics** (validation only, appendix)")
    if extra:
        sentences.append("; ".join(extra) + ".")
    return " ".join(sentences)


def _arm_line(row: dict[str, Any], matched: bool) -> str:
    against = "its real-only arm" if matched else arm_label(row["baseline"])
    v = verdict(row)
    line = f"**{arm_label(row['arm'])}** vs {against}: {fmt.signed(row['mean_diff'])} IoU points, 95 % CI " \
           f"{fmt.interval(row['t_lo'], row['t_hi'])}: **{v}**"
    if v in ("better", "worse"):
        line += f" (n = {fmt.count(int(row['n']), row['level'], row['level'] + 's')})"
    elif not fmt.missing(row.get("mde")):
        over = fmt.count(int(row["n"]), row["level"], f"{row['level']}s")
        need = row.get("n_needed")
        line += (f" ({over} detect ±{row['mde']:.2f} points with 80 % power; the paper's +{PAPER_GAIN} needs "
                 + (f"{need:,} {row['level']}s)" if need is not None else f"{row.get('power_note') or 'n/a'})"))
    return line + "."


def _grouped_lines(rows: list[dict[str, Any]], matched: bool) -> list[str]:
    """One line per verdict (better / worse / no detectable difference) when arms outnumber the lines."""
    against = "its real-only arm" if matched else arm_label(rows[0]["baseline"])
    titles = {"better": f"**Better** than {against}", "worse": f"**Worse** than {against}",
              "none": f"**No detectable difference** from {against}"}
    groups: dict[str, list[str]] = {k: [] for k in titles}
    for r in rows:
        v = verdict(r)
        groups[v if v in ("better", "worse") else "none"].append(f"{arm_label(r['arm'])} {_diff(r)} (n = {r['n']})")
    return [f"{titles[k]} (IoU points, 95 % CI): {'; '.join(items)}." for k, items in groups.items() if items]


def _control_said(v: str) -> str:
    """The control verdict in words: EssNet has to beat the control, not merely match it."""
    return {"better": "EssNet beats the control", "worse": "**EssNet is worse than the control**"}.get(
        v, f"**EssNet does not beat the control** ({v})")


def _power_cells(r: dict[str, Any]) -> list[str]:
    """The two power cells of a table row: detectable difference, units needed for the paper's gain."""
    need, note = r.get("n_needed"), r.get("power_note") or "n/a"
    return [f"±{r['mde']:.2f}" if not fmt.missing(r.get("mde")) else note,
            f"{need:,}" if need is not None else note]


def control_line(control: pl.DataFrame, pooled: bool) -> str:
    """EssNet vs the intensity control, every pairing in one line ('' when the sweep has no such pair)."""
    rows = list(primary_rows(control, pooled).values())
    if not rows:
        return ""
    items = []
    for r in sorted(rows, key=lambda r: r["arm"]):
        rest = {k: v for k, v in arm_factors(r["arm"]).items() if k != "synthesis"}
        where = arm_label(",".join(f"{k}={v}" for k, v in rest.items())) if rest else ""
        said = _control_said(verdict(r))
        items.append((f"{where}: " if where and len(rows) > 1 else "") +
                     f"{fmt.signed(r['mean_diff'])} IoU points, 95 % CI {fmt.interval(r['t_lo'], r['t_hi'])}: {said}")
    return "**EssNet vs the intensity control**: " + "; ".join(items) + "."


def patient_line(patients: pl.DataFrame | None) -> str:
    """The worst patient and the outliers, in one line."""
    worst = worst_patient(patients)
    if worst is None or patients is None:
        return "No per-patient tables were logged: no worst patient or outlier check."
    line = (f"**Worst patient**: {worst['patient_id']}, mean test IoU {worst['mean']:.3f} over its "
            f"{fmt.count(worst['n'], 'result', 'results')} (lowest {worst['low']:.3f}: {arm_label(worst['low_arm'])}, "
            f"seed {worst['low_seed']}).")
    flagged, total = outlier_table(patients), wide(patients).height
    if flagged.height == 0:
        return line + f" **Outliers** ({outliers.rule_text()}): none of {total} per-patient results."
    shown = [f"{r['patient_id']} ({arm_label(r['arm'])}, seed {r['seed']})"
             for r in flagged.head(3).iter_rows(named=True)]
    more = f" and {flagged.height - 3} more" if flagged.height > 3 else ""
    return line + (f" **Outliers** ({outliers.rule_text()}): {flagged.height} of {total} per-patient results: "
                   f"{'; '.join(shown)}{more}.")


def findings_lines(
    comps: pl.DataFrame, control: pl.DataFrame, patients: pl.DataFrame | None, *, pooled: bool, status: str,
    no_comparison: str = "",
) -> list[str]:
    """'## Findings': status (when partial), each arm vs its baseline, EssNet vs control, worst patient."""
    head = [status] if status else []
    tail = [t for t in (control_line(control, pooled), patient_line(patients)) if t]
    rows = sorted(primary_rows(comps, pooled).values(), key=lambda r: r["arm"])
    matched = len({r["baseline"] for r in rows}) > 1
    budget = MAX_LINES - len(head) - len(tail)
    if not rows:
        middle = [no_comparison or "No arm could be paired with a baseline: no comparison."]
    elif len(rows) <= budget:
        middle = [_arm_line(r, matched) for r in rows]
    else:
        middle = _grouped_lines(rows, matched)
    return ["## Findings", "", *[f"- {line}" for line in (head + middle + tail)[:MAX_LINES]], ""]


# ----------------------------------------------------------------------------- tables


def comparison_table(summary: pl.DataFrame, comps: pl.DataFrame, arms: Sequence[str], *, pooled: bool) -> list[str]:
    """'## Comparison with the baseline': one row per arm, IoU first, then the paired difference and its power."""
    by = {(r["arm"], r["metric"]): r for r in summary.iter_rows(named=True)}
    prim = primary_rows(comps, pooled)
    bases = {r["baseline"] for r in prim.values()}
    over = primary_level(pooled)
    against = arm_label(next(iter(bases))) if len(bases) == 1 else "its real-only arm"
    L = ["## Comparison with the baseline", "",
         f"| arm | n | IoU mean [95 % CI] | Dice mean | Δ IoU vs {against}, points [95 % CI] | p | verdict "
         f"| detectable at 80 % power | {over}s for +{PAPER_GAIN} |", "|---|---|---|---|---|---|---|---|---|"]
    order = sorted(arms, key=lambda a: (a not in bases, a))
    for a in order:
        iou, dice = by.get((a, "iou"), {}), by.get((a, "dice"), {})
        n = iou.get("n")
        n_cell = "n/a" if n is None else f"{n}" + (" patients" if iou.get("over") == "patient" else "")
        mean = (f"{fmt.num(iou['mean'])} [{fmt.num(iou['t_lo'])}, {fmt.num(iou['t_hi'])}]" if iou
                else "no test metrics (see validation only)")
        r = prim.get(a)
        if r is None:
            cells = ["baseline" if a in bases else "not compared", "", "", "", ""]
        else:
            cells = [_diff(r), fmt.pval(r["t_p"]), verdict(r), *_power_cells(r)]
        L.append(f"| {arm_label(a)} | {n_cell} | {mean} | {fmt.num(dice.get('mean'))} | " + " | ".join(cells) + " |")
    L += ["", f"n: {over}s per arm. Δ: arm minus baseline, paired by {over}, in IoU points (x100), with its 95 % t "
          f"interval; p: paired t-test over {over}s; verdict from that interval (better: above 0; worse: below 0). "
          f"Detectable at 80 % power: the smallest true difference a two-sided paired t-test (alpha 0.05) over "
          f"these {over}s finds 80 % of the time, given the measured SD of the differences; {over}s for "
          f"+{PAPER_GAIN}: how many it needs to find the paper's +{PAPER_GAIN} IoU points (Mujtaba et al. 2025) "
          "as often. Every metric and the (seed, patient) pairing: appendix.", ""]
    return L


def control_section(control: pl.DataFrame, pooled: bool) -> list[str]:
    """'## EssNet vs the non-GAN control': one table row per EssNet / intensity pair ([] when none)."""
    if control.height == 0:
        return []
    over = primary_level(pooled)
    L = ["## EssNet vs the non-GAN control (synthesis: intensity)", "",
         "The intensity arm mixes the same CT slices and masks in at the same ratio, remapped to the real-MRI "
         "histogram without any learned network (liverlab/train/intensity_synth.py). If EssNet does not beat "
         "it, the adversarial translation adds nothing over a histogram trick on this data.", "",
         f"| EssNet arm | control | n | Δ IoU, points [95 % CI] | paired t p | Wilcoxon p | d_z | verdict "
         f"| detectable at 80 % power | {over}s for +{PAPER_GAIN} |", "|---|---|---|---|---|---|---|---|---|---|"]
    prim = primary_rows(control, pooled)
    for arm in sorted(set(control["arm"].to_list())):
        r = prim.get(arm)
        if r is None:
            continue
        cells = [arm_label(arm), arm_label(r["baseline"]), fmt.count(int(r["n"]), over, f"{over}s"), _diff(r),
                 fmt.pval(r["t_p"]), fmt.pval(r["w_p"]), fmt.num(r["d_z"], 2), _control_said(verdict(r)),
                 *_power_cells(r)]
        L.append("| " + " | ".join(cells) + " |")
    if prim:
        notes = [f"`{a}`: {r['note']}" for a, r in sorted(prim.items()) if r["note"]]
        L += [""] + [f"- note, {n}" for n in notes]
    return L + [""]
