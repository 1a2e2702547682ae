"""The data-scarcity curve: test IoU against the number of real MRI training patients.

A sweep whose arms cross ``data.train_patients`` (e.g. ``[1, 2, 4, all]``)
with ``synthesis`` gets, in its report, a table and a figure with one line
per synthesis arm (mean and 95 % t interval at each size), each arm's paired
difference against the real-only arm **at the same size**
(``arms.matched_baselines``), and a sentence per arm saying at which size,
if any, synthetic data stops helping.

The rule: at size n the arm *helps* when the lower end of the 95 % interval
of its paired difference is above 0. It *stops helping from* n* when n* is
the smallest size at which, and at every larger size, the interval includes
or is below 0. The difference is the primary paired level of the report:
over patients for a k-fold sweep (pooled folds), else over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from liverlab.report.arms import arm_factors, arm_label, drop_factor

FACTOR = "data.train_patients"
METRIC = "iou"


def size_order(value: str) -> tuple[int, float]:
    """Sort key of a size: integers ascending, then 'all' (and anything else) last."""
    try:
        return 0, float(int(value))
    except ValueError:
        return 1, math.inf


def has_scarcity(arms: list[str]) -> bool:
    """Whether ``data.train_patients`` is an arm factor taking at least two values."""
    return len({arm_factors(a).get(FACTOR) for a in arms if FACTOR in arm_factors(a)}) >= 2


def _pick(comps: pl.DataFrame, arm: str, level: str) -> dict[str, Any] | None:
    hit = comps.filter((pl.col("arm") == arm) & (pl.col("metric") == METRIC) & (pl.col("level") == level))
    return hit.row(0, named=True) if hit.height else None


def scarcity_table(summary: pl.DataFrame, comps: pl.DataFrame, pooled: bool = False) -> pl.DataFrame:
    """One row per (line, size): line (the arm without the size factor), size, n, over, mean, t_lo, t_hi,
    and against the real-only arm of the same size: baseline, level, n_pairs, diff, diff_lo, diff_hi, p,
    and the (seed, patient) interval sp_lo, sp_hi where per-patient tables exist (IoU points)."""
    level = "patient" if pooled else "seed"
    rows: list[dict[str, Any]] = []
    for r in summary.filter(pl.col("metric") == METRIC).iter_rows(named=True):
        size = arm_factors(r["arm"]).get(FACTOR)
        if size is None:
            continue
        row: dict[str, Any] = {"arm": r["arm"], "line": drop_factor(r["arm"], FACTOR), "size": size, "n": r["n"],
                               "over": r.get("over") or "seed", "mean": r["mean"], "t_lo": r["t_lo"],
                               "t_hi": r["t_hi"], "baseline": None, "level": None, "n_pairs": None,
                               "diff": None, "diff_lo": None, "diff_hi": None, "p": None, "sp_lo": None,
                               "sp_hi": None}
        main = _pick(comps, r["arm"], level)
        if main is not None:
            row.update(baseline=main["baseline"], level=level, n_pairs=main["n"], diff=main["mean_diff"],
                       diff_lo=main["t_lo"], diff_hi=main["t_hi"], p=main["t_p"])
        sp = _pick(comps, r["arm"], "seed x patient")
        if sp is not None:
            row.update(sp_lo=sp["t_lo"], sp_hi=sp["t_hi"])
        rows.append(row)
    schema = {"arm": pl.String, "line": pl.String, "size": pl.String, "n": pl.Int64, "over": pl.String,
              "mean": pl.Float64, "t_lo": pl.Float64, "t_hi": pl.Float64, "baseline": pl.String,
              "level": pl.String, "n_pairs": pl.Int64, "diff": pl.Float64, "diff_lo": pl.Float64,
              "diff_hi": pl.Float64, "p": pl.Float64, "sp_lo": pl.Float64, "sp_hi": pl.Float64}
    table = pl.DataFrame(rows, schema=schema)
    if table.height == 0:
        return table
    order = sorted(table["size"].unique().to_list(), key=size_order)
    return (table.with_columns(pl.col("size").replace_strict(order, list(range(len(order))),
                                                             return_dtype=pl.Int64).alias("_o"))
            .sort("line", "_o").drop("_o"))


def crossing(table: pl.DataFrame) -> dict[str, str]:
    """Line -> a sentence saying where synthetic data stops helping (lines with a paired difference)."""
    out: dict[str, str] = {}
    for (line,), g in sorted(table.filter(pl.col("diff").is_not_null()).group_by("line"), key=lambda kv: kv[0][0]):
        sizes = g["size"].to_list()
        lo = [v if v is not None and not math.isnan(v) else math.nan for v in g["diff_lo"].to_list()]
        helps = [not math.isnan(v) and v > 0 for v in lo]
        undefined = [s for s, v in zip(sizes, lo) if math.isnan(v)]
        name = arm_label(line)
        if all(helps):
            text = f"{name} helps at every size tested ({', '.join(sizes)} patients): the 95 % CI of the paired " \
                   "difference is above 0 at each"
        elif not any(helps):
            text = f"{name} does not help at any size tested ({', '.join(sizes)} patients): the 95 % CI of the " \
                   "paired difference includes or is below 0 at each"
        else:
            last = max(i for i, h in enumerate(helps) if h)
            helped = [s for s, h in zip(sizes, helps) if h]
            if last == len(sizes) - 1:
                text = f"{name} helps at {', '.join(helped)} patients, including the largest size; it does not " \
                       f"at {', '.join(s for s, h in zip(sizes, helps) if not h)}"
            else:
                text = f"{name} helps at {', '.join(helped)} patients and **stops helping from " \
                       f"{sizes[last + 1]} patients** (the 95 % CI includes or is below 0 there and at every " \
                       "larger size)"
        if undefined:
            text += f" (no interval at {', '.join(undefined)}: fewer than 2 pairs, counted as not helping)"
        out[str(line)] = text + "."
    return out


def scarcity_figure(table: pl.DataFrame, path: Path) -> Path:
    """Mean test IoU (95 % t band and error bars) against the number of real training patients."""
    from liverlab.report.figures import SkipFigure, _color, _figure, _save

    if table.height == 0:
        raise SkipFigure(f"no {FACTOR} arm factor with test IoU")
    sizes = sorted(table["size"].unique().to_list(), key=size_order)
    pos = {s: i for i, s in enumerate(sizes)}
    fig, ax = _figure()
    lines = sorted(table["line"].unique().to_list())
    for i, line in enumerate(lines):
        g = table.filter(pl.col("line") == line)
        x = np.array([pos[s] for s in g["size"].to_list()], dtype=float) + 0.04 * (i - (len(lines) - 1) / 2)
        y, lo, hi = (g[c].cast(pl.Float64).fill_null(math.nan).to_numpy() for c in ("mean", "t_lo", "t_hi"))
        c = _color(arm_factors(line).get("synthesis"), i)
        over = g["over"][0]
        lo_n, hi_n = int(g["n"].min()), int(g["n"].max())  # type: ignore[arg-type]
        n_text = f"{lo_n}" if lo_n == hi_n else f"{lo_n}-{hi_n}"
        ax.plot(x, y, marker="o", color=c, label=f"{arm_label(line)} (n = {n_text} {over}s per size)")
        ok = ~np.isnan(lo)
        ax.fill_between(x[ok], lo[ok], hi[ok], color=c, alpha=0.15)
        ax.errorbar(x[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt="none", ecolor=c, capsize=4)
    lo_lim, hi_lim = ax.get_ylim()
    ax.set_ylim(max(lo_lim, 0.0), min(hi_lim, 1.0))  # IoU is in [0, 1]; t bands of few units may reach past it
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_xlabel(f"real MRI training patients ({FACTOR})")
    ax.set_ylabel("test IoU")
    ax.set_title("Data scarcity: test IoU vs real training patients (mean, 95 % t band)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _f(x: Any, nd: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _pt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.2f}"


def markdown_lines(table: pl.DataFrame, sentences: dict[str, str], figure: str | None) -> list[str]:
    """The report's 'Data scarcity' section."""
    L = ["## Data scarcity: test IoU vs real training patients", ""]
    if table.height == 0:
        return [*L, f"No test IoU for the `{FACTOR}` arms.", ""]
    level = next((v for v in table["level"].to_list() if v), None)
    L.append(f"Each synthesis arm against the real-only arm with the same `{FACTOR}` (paired "
             + {"patient": "over patients, each patient's difference averaged over seeds",
                "seed": "over seeds"}.get(level or "", "n/a") + "); IoU differences in points. "
             "An arm helps at a size when the lower end of the 95 % CI of the difference is above 0.")
    L += ["", "| arm | real training patients | n | mean IoU | 95 % t CI | vs real only (points) | 95 % CI | p "
          "| (seed, patient) CI |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        diff = "baseline" if r["diff"] is None else _pt(r["diff"])
        ci = "" if r["diff"] is None else f"[{_pt(r['diff_lo'])}, {_pt(r['diff_hi'])}]"
        p = "" if r["p"] is None or math.isnan(r["p"]) else f"{r['p']:.3g}"
        sp = "" if r["sp_lo"] is None else f"[{_pt(r['sp_lo'])}, {_pt(r['sp_hi'])}]"
        L.append(f"| {arm_label(r['line'])} | {r['size']} | {r['n']} {r['over']}s | {_f(r['mean'])} | "
                 f"[{_f(r['t_lo'])}, {_f(r['t_hi'])}] | {diff} | {ci} | {p} | {sp} |")
    L.append("")
    for line, text in sentences.items():
        L.append(f"- **Where it stops helping** (`{line}`): {text}")
    if not sentences:
        L.append("- No arm has a real-only arm of the same size to compare with.")
    if figure:
        L += ["", f"![data scarcity]({figure})"]
    L.append("")
    return L
