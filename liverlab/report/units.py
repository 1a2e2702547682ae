"""Which runs enter the report, and which of their values.

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
  an arm of the comparison (:func:`with_arm` moves it to a ``fold`` column) and
  ``liverlab.report.folds`` pools the per-patient test rows of all folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from liverlab.report.arms import arm_factors, drop_factor

METRICS: tuple[str, ...] = ("iou", "dice", "assd", "mssd", "ravd")
POINT_METRICS = frozenset({"iou", "dice"})  # differences reported in points (x100)
OBJECTIVE = "best.val/iou"
NO_ARM = "(no arm)"
FOLD_FACTOR = "data.split.fold"


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
