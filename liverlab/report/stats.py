"""Per-arm statistics and paired comparisons against a baseline arm.

Conventions (documented in docs/report.md):

* The unit of replication is the **seed**. A sweep may run several Optuna
  samples per (arm, seed); :func:`select_units` keeps the one with the best
  validation objective (``best.val/iou``), i.e. model selection on
  validation, evaluation on test. With one trial per (arm, seed) nothing is
  dropped.
* A run's value for metric ``m`` is ``metric.test/<m>`` (logged once after
  training) and nothing else: a run without test metrics has a null test
  value. Its validation value ``best.val/<m>`` is a separate column
  (``val.<m>``), never mixed into a column that says test.
* k-fold sweeps: when ``data.split.fold`` is an arm factor, the fold is not
  an arm of the comparison (``with_arm`` moves it to a ``fold`` column) and
  ``liverlab.report.folds`` pools the per-patient test rows of all folds.
* Intervals are 95 %: Student t (``mean +- t_{0.975, n-1} * sd / sqrt(n)``)
  and percentile bootstrap of the mean (seeded, ``n_boot`` resamples).
* Paired differences are ``arm - baseline`` over shared seeds (and over
  shared (seed, patient) pairs where per-patient tables exist); IoU and Dice
  differences are in **points** (x100), the others in their own units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl

from liverlab.errors import LiverlabError

METRICS: tuple[str, ...] = ("iou", "dice", "assd", "mssd", "ravd")
POINT_METRICS = frozenset({"iou", "dice"})
OBJECTIVE = "best.val/iou"
NO_ARM = "(no arm)"
FOLD_FACTOR = "data.split.fold"
_SYNTH_LABEL = {"none": "real only", "essnet": "real + EssNet", "cyclegan": "real + CycleGAN",
                "intensity": "real + intensity remap"}
_SPLIT_FACTORS = re.compile(r",(?=[\w.\-]+=)")


# ----------------------------------------------------------------------------- arms


def arm_factors(arm: str | None) -> dict[str, str]:
    """``'synthesis=none,unet.mixing_ratio=0.5'`` -> ``{'synthesis': 'none', 'unet.mixing_ratio': '0.5'}``."""
    if not arm or "=" not in arm:
        return {}
    return dict(part.split("=", 1) for part in _SPLIT_FACTORS.split(arm) if "=" in part)


def arm_label(arm: str) -> str:
    """Plain words for an arm: 'real + EssNet (mixing ratio 0.5)'."""
    factors = arm_factors(arm)
    if not factors:
        return arm
    synth = factors.pop("synthesis", None)
    head = _SYNTH_LABEL.get(synth or "", f"synthesis {synth}" if synth else "")
    rest = [
        f"mixing ratio {v}" if k.endswith("mixing_ratio")
        else (f"{v} real training patients" if v != "1" else "1 real training patient") if k == "data.train_patients"
        else f"{k} {v}" for k, v in sorted(factors.items())
    ]
    if head and rest:
        return f"{head} ({', '.join(rest)})"
    return head or ", ".join(rest)


def arm_synthesis(runs: pl.DataFrame) -> dict[str, str | None]:
    """Arm -> its synthesis value, from the ``synthesis`` arm factor, else ``param.synthesis``."""
    out: dict[str, str | None] = {}
    for arm in runs["arm"].unique().sort().to_list():
        synth = arm_factors(arm).get("synthesis")
        if synth is None and "param.synthesis" in runs.columns:
            values = runs.filter(pl.col("arm") == arm)["param.synthesis"].drop_nulls().unique().to_list()
            synth = values[0] if len(values) == 1 else None
        out[arm] = synth
    return out


def resolve_baseline(runs: pl.DataFrame, baseline: str | None) -> tuple[str | None, str]:
    """(baseline arm or None, a sentence saying how it was chosen).

    Explicit ``baseline`` must be one of the arms (LiverlabError listing them);
    otherwise the arm whose synthesis is ``none`` (real MRI only).
    """
    arms = sorted(runs["arm"].unique().to_list())
    if baseline is not None:
        if baseline not in arms:
            raise LiverlabError(
                f"--baseline {baseline!r} is not an arm with finished runs in this sweep; arms: {', '.join(arms)}"
            )
        return baseline, f"baseline `{baseline}` (chosen with --baseline)"
    real_only = [a for a, s in arm_synthesis(runs).items() if s == "none"]
    if not real_only:
        return None, "no baseline: no arm has synthesis = none (pass --baseline ARM)"
    note = f"baseline `{real_only[0]}` (the arm with synthesis = none, real MRI only)"
    if len(real_only) > 1:
        note += f"; {len(real_only)} arms have synthesis = none, the first was taken (use --baseline to choose)"
    return real_only[0], note


# ----------------------------------------------------------------------------- run values


def drop_factor(arm: str, factor: str) -> str:
    """``'data.split.fold=2,synthesis=none'`` without ``factor`` -> ``'synthesis=none'`` ('default' if none is left)."""
    factors = arm_factors(arm)
    if factor not in factors:
        return arm
    return ",".join(f"{k}={v}" for k, v in factors.items() if k != factor) or "default"


def with_arm(runs: pl.DataFrame) -> pl.DataFrame:
    """Make sure ``arm`` (String), ``seed`` (Int64) and ``fold`` (Int64) columns exist.

    Missing arms -> '(no arm)'. An arm factor ``data.split.fold`` is moved out
    of the arm into ``fold`` (the trial's own arm stays in ``trial_arm``): the
    folds of a k-fold sweep are pooled, not compared. Idempotent.
    """
    arm = pl.col("arm") if "arm" in runs.columns else pl.lit(None, dtype=pl.String)
    seed = pl.col("seed") if "seed" in runs.columns else pl.lit(None, dtype=pl.Int64)
    out = runs.with_columns(arm.fill_null(NO_ARM).alias("arm"), seed.cast(pl.Int64).alias("seed"))
    if "fold" in out.columns:
        return out
    arms = out["arm"].to_list()
    folds = [arm_factors(a).get(FOLD_FACTOR) for a in arms]
    return out.with_columns(
        pl.Series("trial_arm", arms, dtype=pl.String),
        pl.Series("arm", [drop_factor(a, FOLD_FACTOR) for a in arms], dtype=pl.String),
        pl.Series("fold", [int(f) if f is not None else None for f in folds], dtype=pl.Int64),
    )


def metric_values(runs: pl.DataFrame, metrics: Sequence[str] = METRICS) -> pl.DataFrame:
    """Add ``value.<m>`` (``metric.test/<m>`` only; null without test metrics) and ``val.<m>``
    (``best.val/<m>``) for each metric. Test and validation never share a column.
    Columns already there are kept (pooled k-fold units carry their pooled values)."""
    exprs: list[pl.Expr] = []
    for m in metrics:
        if f"value.{m}" in runs.columns and f"val.{m}" in runs.columns:
            continue
        test, val = f"metric.test/{m}", f"best.val/{m}"
        t = pl.col(test) if test in runs.columns else pl.lit(None, dtype=pl.Float64)
        v = pl.col(val) if val in runs.columns else pl.lit(None, dtype=pl.Float64)
        exprs.append(t.cast(pl.Float64).alias(f"value.{m}"))
        exprs.append(v.cast(pl.Float64).alias(f"val.{m}"))
    return runs.with_columns(exprs)


def select_units(runs: pl.DataFrame, objective: str = OBJECTIVE) -> pl.DataFrame:
    """One run per (arm, seed, fold): the one with the highest ``objective`` (ties: earliest).

    Runs without a seed are each their own unit (and cannot be paired). Without
    a fold factor ``fold`` is null and this is one run per (arm, seed).
    """
    runs = with_arm(runs)
    score = pl.col(objective) if objective in runs.columns else pl.lit(None, dtype=pl.Float64)
    ranked = runs.with_columns(score.fill_nan(None).alias("_score"), pl.int_range(pl.len()).alias("_order"))
    seeded = (
        ranked.filter(pl.col("seed").is_not_null())
        .sort(["_score", "_order"], descending=[True, False], nulls_last=True)
        .unique(subset=["arm", "seed", "fold"], keep="first", maintain_order=True)
    )
    unseeded = ranked.filter(pl.col("seed").is_null())
    return pl.concat([seeded, unseeded]).sort("arm", "seed", "fold", "_order", nulls_last=True).drop("_score", "_order")


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


def matched_baselines(arms: Sequence[str], baseline: str | None, synthesis: dict[str, str | None]) -> dict[str, str]:
    """Arm -> the baseline arm it is compared with.

    An explicit ``baseline``: every other arm against it. Otherwise the
    real-only arms (``synthesis`` none) are the baselines; when they differ in
    some factor (e.g. ``data.train_patients``), each arm is compared with the
    real-only arm that has its values of those factors (none: not compared).
    """
    if baseline is not None:
        return {a: baseline for a in arms if a != baseline}
    bases = sorted(a for a in arms if synthesis.get(a) == "none")
    if not bases:
        return {}
    strata = sorted({k for b in bases for k in arm_factors(b) if k != "synthesis"
                     and len({arm_factors(x).get(k) for x in bases}) > 1})
    out: dict[str, str] = {}
    for a in arms:
        if a in bases:
            continue
        fa = arm_factors(a)
        hit = [b for b in bases if all(arm_factors(b).get(k) == fa.get(k) for k in strata)]
        if hit:
            out[a] = hit[0]
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
    :func:`matched_baselines`); None: an empty table with the same columns.
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
                rows.append({**head, "level": "patient", **paired_test(per["a"].to_numpy(), per["b"].to_numpy(), scale)})
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
