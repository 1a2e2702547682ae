"""Per-arm statistics and paired comparisons against a baseline arm.

The runs and values these read are chosen by ``liverlab.report.units`` (one
unit per (arm, seed), test values only); which arm is compared with which
comes from ``liverlab.report.arms``; the power of each comparison is
``liverlab.report.power``. Conventions (documented in docs/report.md):

* Intervals are 95 %: Student t (``mean +- t_{0.975, n-1} * sd / sqrt(n)``)
  and percentile bootstrap of the mean (seeded, ``n_boot`` resamples).
* Paired differences are ``arm - baseline`` over shared seeds (and over
  shared (seed, patient) pairs where per-patient tables exist); IoU and Dice
  differences are in **points** (x100), the others in their own units.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl

from liverlab.report.units import METRICS, POINT_METRICS, metric_values, with_arm

# ----------------------------------------------------------------------------- intervals


def t_interval(x: np.ndarray, conf: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; NaNs when n < 2."""
    from scipy import stats

    x = np.asarray(x, dtype=float)
    n = x.size
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + conf / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean() - half), float(x.mean() + half)


def bootstrap_interval(x: np.ndarray, n_boot: int = 10_000, seed: int = 0, conf: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (vectorised, in chunks of <= ~8M draws)."""
    x = np.asarray(x, dtype=float)
    n = x.size
    if n < 2 or n_boot < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 8_000_000 // n))  # bounds memory for very large arms
    means = np.concatenate(
        [x[rng.integers(0, n, size=(min(chunk, n_boot - i), n))].mean(axis=1) for i in range(0, n_boot, chunk)]
    )
    lo, hi = np.percentile(means, [50 * (1 - conf), 50 * (1 + conf)])
    return float(lo), float(hi)


def describe(x: Iterable[float], n_boot: int = 10_000, seed: int = 0) -> dict[str, float | int]:
    """n, n_inf, mean, sd (ddof 1), t and bootstrap 95 % intervals of the finite values in ``x``.

    Infinite values (a surface distance to an empty mask) cannot enter a mean;
    they are left out and counted in ``n_inf`` so the report can say so.
    """
    values = [float(v) for v in x if v is not None and not math.isnan(v)]
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    n = int(arr.size)
    t_lo, t_hi = t_interval(arr)
    b_lo, b_hi = bootstrap_interval(arr, n_boot=n_boot, seed=seed)
    return {
        "n": n,
        "n_inf": len(values) - n,
        "mean": float(arr.mean()) if n else math.nan,
        "sd": float(arr.std(ddof=1)) if n > 1 else math.nan,
        "t_lo": t_lo,
        "t_hi": t_hi,
        "boot_lo": b_lo,
        "boot_hi": b_hi,
    }


def arm_summary(
    units: pl.DataFrame,
    metrics: Sequence[str] = METRICS,
    n_boot: int = 10_000,
    seed: int = 0,
    *,
    split: str = "test",
    patients: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Long table: arm, metric, source, n, n_inf, mean, sd, t_lo, t_hi, boot_lo, boot_hi, over (metric scale).

    ``split`` 'test' reads ``value.<m>`` (source 'test'), 'val' reads ``val.<m>``
    (source 'best val'). ``n`` counts the finite values the statistics use;
    ``n_inf`` the infinite ones left out; ``over`` says what they are: 'seed'
    (one value per unit), or 'patient' when ``patients`` (the pooled
    per-patient rows of a k-fold sweep: arm, seed, patient_id, metric, value)
    is given: each patient's mean over seeds, so the interval covers patient
    sampling.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be test or val, got {split!r}")
    prefix, source = ("value", "test") if split == "test" else ("val", "best val")
    vals = metric_values(with_arm(units), metrics)
    rows: list[dict[str, Any]] = []
    for arm, group in sorted(vals.group_by("arm"), key=lambda kv: str(kv[0][0])):
        for m in metrics:
            col = group[f"{prefix}.{m}"]
            if col.null_count() == col.len():
                continue
            if patients is not None and split == "test":
                per = (patients.filter((pl.col("arm") == arm[0]) & (pl.col("metric") == m))
                       .group_by("patient_id").agg(pl.col("value").mean()))
                values, over = per["value"].to_list(), "patient"
            if patients is None or split != "test" or not values:
                values, over = col.drop_nulls().to_list(), "seed"
            rows.append({"arm": arm[0], "metric": m, "source": source,
                         **describe(values, n_boot=n_boot, seed=seed), "over": over})
    schema = {"arm": pl.String, "metric": pl.String, "source": pl.String, "n": pl.Int64, "n_inf": pl.Int64,
              "mean": pl.Float64, "sd": pl.Float64, "t_lo": pl.Float64, "t_hi": pl.Float64,
              "boot_lo": pl.Float64, "boot_hi": pl.Float64, "over": pl.String}
    return pl.DataFrame(rows, schema=schema)


# ----------------------------------------------------------------------------- paired tests


def paired_test(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> dict[str, Any]:
    """Paired comparison of ``a - b`` (times ``scale``): mean, t interval, t-test, Wilcoxon, d_z.

    Cases where a test is undefined are not errors: the value is NaN and
    ``note`` says why (n < 2, all differences equal, all differences zero,
    Wilcoxon unable to reach p < 0.05 at this n).
    """
    from scipy import stats

    a_s = np.asarray(a, dtype=float) * scale
    b_s = np.asarray(b, dtype=float) * scale
    finite = np.isfinite(a_s) & np.isfinite(b_s)  # inf distances (empty masks) have no difference
    n_dropped = int((~finite).sum())
    a_s, b_s = a_s[finite], b_s[finite]
    # Rounded to 1e-10: differences that are equal (or zero) in exact arithmetic must not
    # look different because of float noise (d_z would explode, Wilcoxon would see no ties).
    d = np.round(a_s - b_s, 10)
    n = int(d.size)
    notes: list[str] = [f"{n_dropped} pair(s) with an infinite value left out"] if n_dropped else []
    out: dict[str, Any] = {"n": n, "mean_diff": float(d.mean()) if n else math.nan, "sd_diff": math.nan,
                           "t_lo": math.nan, "t_hi": math.nan, "t_stat": math.nan, "t_p": math.nan,
                           "w_stat": math.nan, "w_p": math.nan, "d_z": math.nan}
    if n < 2:
        out["note"] = "; ".join([*notes, f"n = {n} pair(s): no interval or test"])
        return out
    sd = float(d.std(ddof=1))
    out["sd_diff"] = sd
    out["t_lo"], out["t_hi"] = t_interval(d)
    if sd < 1e-9:
        notes.append("all differences equal: t-test and d_z undefined")
    else:
        res = stats.ttest_rel(a_s, b_s)
        out["t_stat"], out["t_p"] = float(res.statistic), float(res.pvalue)
        out["d_z"] = float(d.mean() / sd)
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        notes.append("all differences zero: Wilcoxon undefined")
    else:
        w = stats.wilcoxon(d)
        out["w_stat"], out["w_p"] = float(w.statistic), float(w.pvalue)
        if nonzero < n:
            notes.append(f"Wilcoxon dropped {n - nonzero} zero difference(s)")
        min_p = 2.0 / 2**nonzero
        if min_p > 0.05:
            notes.append(f"with {nonzero} non-zero differences the smallest two-sided Wilcoxon p is {min_p:.4g}")
    out["note"] = "; ".join(notes)
    return out


def paired_comparisons(
    units: pl.DataFrame,
    baseline: str | dict[str, str] | None,
    per_patient: pl.DataFrame | None = None,
    metrics: Sequence[str] = METRICS,
    *,
    pooled: bool = False,
) -> pl.DataFrame:
    """Every other arm against its baseline, per metric, paired by seed and by (seed, patient).

    ``baseline``: one arm for all, or a mapping arm -> baseline arm (see
    ``liverlab.report.arms.matched_baselines``); None: an empty table with the same columns.
    ``per_patient``: long rows (arm, seed, patient_id, metric, value) whose
    ``arm`` is the unit's arm (``liverlab.report.folds.patient_rows``); rows
    of runs that are not units must already be dropped. ``pooled`` (k-fold):
    also a ``patient`` level, each patient's difference averaged over seeds.
    """
    vals = metric_values(with_arm(units), metrics).filter(pl.col("seed").is_not_null())
    if baseline is None:
        pairs: dict[str, str] = {}
    elif isinstance(baseline, str):
        pairs = {a: baseline for a in vals["arm"].unique().to_list() if a != baseline}
    else:
        pairs = dict(baseline)
    rows: list[dict[str, Any]] = []
    has_pp = per_patient is not None and per_patient.height > 0
    for arm in sorted(pairs):
        base_arm = pairs[arm]
        other, base = vals.filter(pl.col("arm") == arm), vals.filter(pl.col("arm") == base_arm)
        for m in metrics:
            scale = 100.0 if m in POINT_METRICS else 1.0
            head = {"arm": arm, "baseline": base_arm, "metric": m,
                    "unit": "points" if m in POINT_METRICS else "units"}
            pair = other.select("seed", pl.col(f"value.{m}").alias("a")).join(
                base.select("seed", pl.col(f"value.{m}").alias("b")), on="seed", how="inner"
            ).drop_nulls().sort("seed")
            if pair.height:
                rows.append({**head, "level": "seed", **paired_test(pair["a"].to_numpy(), pair["b"].to_numpy(), scale)})
            if not has_pp:
                continue
            pp = per_patient.filter(pl.col("metric") == m)  # type: ignore[union-attr]
            a_pp = pp.filter(pl.col("arm") == arm).select("seed", "patient_id", pl.col("value").alias("a"))
            b_pp = pp.filter(pl.col("arm") == base_arm).select("seed", "patient_id", pl.col("value").alias("b"))
            pair = a_pp.join(b_pp, on=["seed", "patient_id"], how="inner").drop_nulls().sort("seed", "patient_id")
            if pair.height == 0:
                continue
            if pooled:
                per = pair.group_by("patient_id").agg(pl.col("a").mean(), pl.col("b").mean()).sort("patient_id")
                rows.append({**head, "level": "patient",
                             **paired_test(per["a"].to_numpy(), per["b"].to_numpy(), scale)})
            rows.append({**head, "level": "seed x patient",
                         **paired_test(pair["a"].to_numpy(), pair["b"].to_numpy(), scale)})
    schema = {"arm": pl.String, "baseline": pl.String, "metric": pl.String, "level": pl.String, "unit": pl.String,
              "n": pl.Int64, "mean_diff": pl.Float64, "sd_diff": pl.Float64, "t_lo": pl.Float64, "t_hi": pl.Float64,
              "t_stat": pl.Float64, "t_p": pl.Float64, "w_stat": pl.Float64, "w_p": pl.Float64, "d_z": pl.Float64,
              "note": pl.String}
    return pl.DataFrame(rows, schema=schema)


def welch_difference(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    """Unpaired ``mean(b) - mean(a)`` (times ``scale``) with Welch's 95 % interval and p-value.

    For two different sweeps, whose seeds are not the same experiment.
    """
    from scipy import stats

    a_s, b_s = np.asarray(a, float) * scale, np.asarray(b, float) * scale
    a_s, b_s = a_s[np.isfinite(a_s)], b_s[np.isfinite(b_s)]
    out = {"diff": float(b_s.mean() - a_s.mean()) if a_s.size and b_s.size else math.nan,
           "lo": math.nan, "hi": math.nan, "p": math.nan}
    if a_s.size < 2 or b_s.size < 2 or (a_s.std() == 0 and b_s.std() == 0):
        return out
    res = stats.ttest_ind(b_s, a_s, equal_var=False)
    ci = res.confidence_interval(0.95)
    out.update(lo=float(ci.low), hi=float(ci.high), p=float(res.pvalue))
    return out
