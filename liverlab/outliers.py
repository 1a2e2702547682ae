"""Outlier cases and per-case summaries (median, worst case) beside the mean.

A mean over patients hides a total failure: on 15 unseen CHAOS patients a
mean IoU of 0.72 held one patient at 0.00 (issue 12). So ``liverlab evaluate``
and the sweep report flag every case that breaks one of two rules, and print
the per-case median and the worst case beside the mean.

Outlier rules (a case is flagged when either holds):

* ``dice < DICE_MIN`` (0.5): less than half the liver overlap, i.e. the
  segmentation is mostly wrong (Dice 0.5 is IoU 1/3);
* ``RAVD > RAVD_MAX_PCT`` (50 %): the predicted liver volume is off by more
  than half of the true volume (``liverlab.metrics.ravd`` is already the
  absolute value, in percent; its absolute value is taken anyway, so a signed
  RAVD from another tool is judged the same way).

A missing/NaN Dice or an infinite RAVD (prediction against an empty label)
also counts. "Worst case" is the minimum for IoU and Dice (higher is better)
and the maximum for ASSD, MSSD and |RAVD| (lower is better). Infinite values
(a surface distance to an empty mask) are left out of mean and median and
counted; the worst case is then ``inf``, which is what it is.

Pure Python / NumPy: imported by ``liverlab.infer.commands`` and
``liverlab.report`` alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: A case with Dice below this is an outlier (a mostly wrong segmentation).
DICE_MIN = 0.5
#: A case whose predicted liver volume is off by more than this many percent of the true one is an outlier.
RAVD_MAX_PCT = 50.0

#: Metrics where a higher value is better (worst case = minimum); the others: worst = maximum of |value|.
HIGHER_IS_BETTER = frozenset({"iou", "dice"})


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def outlier_reasons(row: Mapping[str, Any]) -> list[str]:
    """Why one case is an outlier (empty list: it is not). Reads ``dice`` and ``ravd`` (percent)."""
    reasons: list[str] = []
    dice = _num(row.get("dice"))
    if "dice" in row and (dice is None or math.isnan(dice) or dice < DICE_MIN):
        reasons.append(f"Dice {dice:.2f} < {DICE_MIN:g}" if dice is not None and not math.isnan(dice) else "Dice missing")
    ravd = _num(row.get("ravd"))
    if ravd is not None and (math.isnan(ravd) or abs(ravd) > RAVD_MAX_PCT):
        reasons.append(f"|RAVD| {abs(ravd):.1f} % > {RAVD_MAX_PCT:g} %" if not math.isnan(ravd) else "RAVD missing")
    return reasons


def flag(row: Mapping[str, Any]) -> str:
    """``''`` for a normal case, else the reasons joined by ``'; '`` (the table's ``flag`` column)."""
    return "; ".join(outlier_reasons(row))


def is_outlier(row: Mapping[str, Any]) -> bool:
    return bool(outlier_reasons(row))


def worst(values: Sequence[float], metric: str) -> float:
    """Worst value of a metric over cases: min for IoU/Dice, max of |value| for the others (NaN if none)."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(float(v))], dtype=float)
    if arr.size == 0:
        return math.nan
    return float(arr.min()) if metric in HIGHER_IS_BETTER else float(np.abs(arr).max())


def summarize(rows: Iterable[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per metric: ``{mean, median, worst, n, n_inf}`` over the cases in ``rows``.

    Mean and median use the finite values (``n`` of them); ``n_inf`` counts
    the infinite ones, which still make the worst case (``inf``).
    """
    rows = list(rows)
    out: dict[str, dict[str, float]] = {}
    for m in metrics:
        vals = [float(r[m]) for r in rows if _num(r.get(m)) is not None and not math.isnan(float(r[m]))]
        finite = np.asarray([v for v in vals if math.isfinite(v)], dtype=float)
        if m == "ravd":  # judged by its size: a signed RAVD from another tool averages as |RAVD|
            finite = np.abs(finite)
        out[m] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "median": float(np.median(finite)) if finite.size else math.nan,
            "worst": worst(vals, m),
            "n": int(finite.size),
            "n_inf": len(vals) - int(finite.size),
        }
    return out


def rule_text() -> str:
    """The rules in words (table captions, warnings, report)."""
    return f"Dice < {DICE_MIN:g} or |RAVD| > {RAVD_MAX_PCT:g} %"
