"""Report figures: matplotlib (Agg), PNG, 8 x 5 in at 100 dpi = 800 x 500 px.

Every function writes one file and returns its path, or raises
:class:`SkipFigure` with the reason when the sweep has nothing to plot (no
mixing-ratio factor, no shape metric, no EssNet panel...); the report lists
skipped figures with their reasons rather than failing.

The size is fixed (no ``bbox_inches="tight"``) so that reports are
comparable and tests can check pixel sizes.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from liverlab.report.arms import arm_factors, arm_label
from liverlab.report.stats import t_interval

FIGSIZE = (8.0, 5.0)
DPI = 100
_COLORS = {"none": "#6b6b6b", "cyclegan": "#e0812a", "essnet": "#2a6fdb"}
_FALLBACK = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_MAX_LEVELS = 12  # more distinct mixing ratios than this (continuous sampling): bin them


class SkipFigure(Exception):
    """Nothing to plot for this sweep; the message says why."""


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from liverlab.data.atomic import write_with

    try:  # atomic: the analysis scripts write straight to the user's path
        write_with(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return path


def _title(metric: str) -> str:
    return {"iou": "IoU", "dice": "Dice"}.get(metric, metric.upper())


def _color(key: str | None, i: int) -> str:
    return _COLORS.get(key or "", _FALLBACK[i % len(_FALLBACK)])


_LINESTYLES = ("-", "--", ":", "-.")


def _line_styles(arms: list[str]) -> list[tuple[str, str]]:
    """(colour, line style) per arm: the colour says the synthesis, the line style tells apart
    arms that share it (e.g. two upsamplings of one translator kind)."""
    used: dict[str, int] = {}
    out = []
    for i, arm in enumerate(arms):
        c = _color(arm_factors(arm).get("synthesis"), i)
        out.append((c, _LINESTYLES[used.get(c, 0) % len(_LINESTYLES)]))
        used[c] = used.get(c, 0) + 1
    return out


def _factor_col(df: pl.DataFrame, param: str, factor: str) -> pl.Series:
    """``param.<param>`` where logged, else the arm factor ``factor`` parsed from the arm string."""
    from_arm = pl.Series([arm_factors(a).get(factor) for a in df["arm"].to_list()], dtype=pl.String)
    if f"param.{param}" in df.columns:
        col = df[f"param.{param}"].cast(pl.String)
        return pl.Series(param, [c if c is not None else f for c, f in zip(col.to_list(), from_arm.to_list())])
    return from_arm.alias(param)


def iou_vs_mixing_ratio(vals: pl.DataFrame, path: Path, metric: str = "iou") -> Path:
    """Mean test IoU (95 % t band) against the mixing ratio, one line per synthesis arm.

    Real-only runs (synthesis none) have no synthetic images, so they are
    drawn as a horizontal reference line with its band.
    """
    df = vals.with_columns(
        _factor_col(vals, "unet.mixing_ratio", "unet.mixing_ratio").cast(pl.Float64, strict=False).alias("_x"),
        _factor_col(vals, "synthesis", "synthesis").alias("_synth"),
    ).filter(pl.col(f"value.{metric}").is_not_null())
    synth = df.filter(pl.col("_synth") != "none").drop_nulls("_x")
    if synth.height == 0:
        raise SkipFigure("no mixing-ratio variation among runs with synthetic data")
    fig, ax = _figure()
    xs_all = df["_x"].drop_nulls()
    x_lo, x_hi = (float(xs_all.min()), float(xs_all.max())) if xs_all.len() else (0.0, 1.0)
    base = df.filter(pl.col("_synth") == "none")[f"value.{metric}"].to_numpy()
    if base.size:
        lo, hi = t_interval(base)
        ax.axhline(base.mean(), color=_COLORS["none"], ls="--", label=f"real only (n={base.size})")
        if not math.isnan(lo):
            ax.axhspan(lo, hi, color=_COLORS["none"], alpha=0.15)
    for i, (key, group) in enumerate(sorted(synth.group_by("_synth"), key=lambda kv: str(kv[0][0]))):
        name = str(key[0])
        x = group["_x"].to_numpy()
        y = group[f"value.{metric}"].to_numpy()
        levels = np.unique(x)
        if levels.size > _MAX_LEVELS:  # continuous sampling: 8 quantile bins
            edges = np.unique(np.quantile(x, np.linspace(0, 1, 9)))
            idx = np.clip(np.digitize(x, edges[1:-1]), 0, edges.size - 2)
        else:
            idx = np.searchsorted(levels, x)
        pts = []
        for b in np.unique(idx):
            yb = y[idx == b]
            lo, hi = t_interval(yb)
            pts.append((float(x[idx == b].mean()), float(yb.mean()), lo, hi, yb.size))
        px, py, plo, phi, pn = (np.array(v) for v in zip(*pts))
        c = _color(name, i)
        ax.scatter(x, y, color=c, alpha=0.25, s=12)
        ax.plot(px, py, marker="o", color=c, label=f"real + {arm_label('synthesis=' + name).split('+ ')[-1]} "
                f"(n={int(pn.sum())})")
        ok = ~np.isnan(plo)
        ax.fill_between(px[ok], plo[ok], phi[ok], color=c, alpha=0.2)
        # Error bars too: a band is invisible when there is a single mixing ratio.
        ax.errorbar(px[ok], py[ok], yerr=[py[ok] - plo[ok], phi[ok] - py[ok]], fmt="none", ecolor=c, capsize=4)
    ax.set_xlim(x_lo - 0.05 * (x_hi - x_lo or 1), x_hi + 0.05 * (x_hi - x_lo or 1))
    ax.set_xlabel("mixing ratio (synthetic / real slices)")
    ax.set_ylabel(f"test {_title(metric)}")
    ax.set_title(f"{_title(metric)} vs mixing ratio (mean, 95 % t band)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def distributions(units: pl.DataFrame, path: Path, metric: str = "iou") -> Path:
    """Per-arm box plot of the metric with every seed's value drawn over it."""
    col = f"value.{metric}"
    df = units.filter(pl.col(col).is_not_null())
    if df.height == 0:
        raise SkipFigure(f"no {metric} values")
    arms = sorted(df["arm"].unique().to_list())
    data = [df.filter(pl.col("arm") == a)[col].to_numpy() for a in arms]
    fig, ax = _figure()
    ax.boxplot(data, showfliers=False, widths=0.5)
    rng = np.random.default_rng(0)  # fixed jitter: the same report twice gives the same image
    for i, (a, y) in enumerate(zip(arms, data), start=1):
        synth = arm_factors(a).get("synthesis")
        ax.scatter(i + rng.uniform(-0.12, 0.12, y.size), y, color=_color(synth, i), s=18, zorder=3, alpha=0.8)
    ax.set_xticks(range(1, len(arms) + 1), [f"{arm_label(a)}\n(n={len(y)})" for a, y in zip(arms, data)], fontsize=7)
    ax.set_ylabel(f"test {_title(metric)} (per seed)")
    ax.set_title(f"{_title(metric)} per arm (box: quartiles; points: seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


SHAPE_COLUMNS = ("best.val/shape_dice", "metric.val/shape_dice")


def shape_preservation(units: pl.DataFrame, path: Path) -> Path:
    """Shape Dice (CT mask vs segmentation of the synthetic MRI) per arm: EssNet vs CycleGAN."""
    col = next((c for c in SHAPE_COLUMNS if c in units.columns and units[c].drop_nulls().len()), None)
    if col is None:
        raise SkipFigure("no run logged val/shape_dice")
    df = units.filter(pl.col(col).is_not_null())
    arms = sorted(df["arm"].unique().to_list())
    fig, ax = _figure()
    for i, a in enumerate(arms):
        y = df.filter(pl.col("arm") == a)[col].to_numpy()
        lo, hi = t_interval(y)
        c = _color(arm_factors(a).get("synthesis"), i)
        err = None if math.isnan(lo) else [[y.mean() - lo], [hi - y.mean()]]
        ax.bar(i, y.mean(), color=c, alpha=0.6, yerr=err, capsize=6)
        ax.scatter(np.full(y.size, i), y, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(arms)), [f"{arm_label(a)}\n(n={df.filter(pl.col('arm') == a).height})" for a in arms],
                  fontsize=7)
    ax.set_ylabel(f"shape Dice ({col})")
    ax.set_title("Shape preservation of the translation (mean, 95 % t interval)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


JUDGE_COLUMNS = ("metric.val/judge_iou", "best.val/judge_iou")


def judge_note(units: pl.DataFrame) -> str:
    """How far to trust shape Dice: the judge's own held-out IoU on real MRI ('' when not logged)."""
    col = next((c for c in JUDGE_COLUMNS if c in units.columns and units[c].drop_nulls().len()), None)
    if col is None:
        return ""
    values = sorted({round(float(v), 4) for v in units[col].drop_nulls().to_list()})
    shown = ", ".join(f"{v:.3f}" for v in values)
    return f"judge: a real-MRI U-Net whose own held-out IoU on real MRI is {shown} (val/judge_iou)"


def learning_curves(hist: pl.DataFrame, runs: pl.DataFrame, path: Path, key: str = "val/iou") -> Path:
    """Mean ``key`` per logged step per arm with a 95 % t band over runs."""
    h = hist.filter(pl.col("key") == key).join(runs.select("run_id", "arm"), on="run_id", how="inner")
    if h.height == 0:
        raise SkipFigure(f"no {key} history")
    fig, ax = _figure()
    groups = sorted(h.group_by("arm"), key=lambda kv: str(kv[0][0]))
    for (arm, group), (c, ls) in zip(groups, _line_styles([str(a[0]) for a, _ in groups])):
        steps, means, los, his = [], [], [], []
        for (step,), g in sorted(group.group_by("step"), key=lambda kv: kv[0][0]):
            y = g["value"].to_numpy()
            steps.append(step)
            means.append(y.mean())
            lo, hi = t_interval(y)
            los.append(lo)
            his.append(hi)
        n = group["run_id"].n_unique()
        ax.plot(steps, means, color=c, ls=ls, label=f"{arm_label(arm[0])} (n={n})")
        lo_a, hi_a = np.array(los), np.array(his)
        ok = ~np.isnan(lo_a)
        ax.fill_between(np.array(steps)[ok], lo_a[ok], hi_a[ok], color=c, alpha=0.2)
    ax.set_xlabel("MLflow step (EssNet: epoch; U-Net: optimiser iteration)")
    ax.set_ylabel(key)
    ax.set_title(f"Learning curves: {key} (mean, 95 % t band)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def translation_panel(uri: str, units: pl.DataFrame, path: Path, metric: str = "iou") -> tuple[Path, str]:
    """Copy the last ``panels/essnet_*.png`` of the best EssNet run (highest metric) to ``path``.

    Returns (path, run_id). Tries EssNet runs in order of the metric until one
    has a translation panel (a trial that reused a cached translator may have
    none; ``panels/unet_*.png`` are segmentation panels, not translations).
    """
    from liverlab.tracking.reader import download_artifact, list_artifacts

    synth = _factor_col(units, "synthesis", "synthesis")
    cands = units.with_columns(synth.alias("_synth")).filter(pl.col("_synth") == "essnet")
    if cands.height == 0:
        raise SkipFigure("no EssNet run")
    cands = cands.sort(f"value.{metric}", descending=True, nulls_last=True)
    for run_id in cands["run_id"].to_list():
        pngs = [p for p in list_artifacts(uri, run_id, "panels", runs=units)
                if p.lower().endswith(".png") and Path(p).name.startswith("essnet")]
        if not pngs:
            continue
        tmp = path.parent / f".panel-{run_id}"
        got = download_artifact(uri, run_id, sorted(pngs)[-1], tmp, runs=units)
        if got is None:
            continue
        shutil.move(str(got), path)
        path.chmod(0o644)  # the copied artifact may carry a private temp file's mode
        shutil.rmtree(tmp, ignore_errors=True)
        return path, run_id
    raise SkipFigure("no EssNet run has a panels/essnet_*.png artifact")


def all_figures(
    uri: str, runs_vals: pl.DataFrame, units: pl.DataFrame, hist: pl.DataFrame, out: Path
) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
    """Make every figure into ``out``: (written {name: path}, skipped {name: reason}, notes {name: text})."""
    written: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    jobs: Sequence[tuple[str, Any]] = (
        ("iou_vs_mixing_ratio", lambda p: iou_vs_mixing_ratio(runs_vals, p)),
        ("iou_distributions", lambda p: distributions(units, p)),
        ("shape_preservation", lambda p: shape_preservation(units, p)),
        ("learning_curves", lambda p: learning_curves(hist, units, p)),
    )
    for name, fn in jobs:
        try:
            written[name] = fn(out / f"{name}.png")
        except SkipFigure as why:
            skipped[name] = str(why)
    if "shape_preservation" in written and (judge := judge_note(units)):
        notes["shape_preservation"] = judge
    try:
        p, run_id = translation_panel(uri, units, out / "translation_panel.png")
        written["translation_panel"] = p
        notes["translation_panel"] = f"from run `{run_id}` (best EssNet run by test IoU)"
    except SkipFigure as why:
        skipped["translation_panel"] = str(why)
    return written, skipped, notes
