"""How many seeds a claim needs: the power of the report's paired t-test.

For a comparison over n paired units (seeds; patients in a pooled k-fold
sweep) whose differences have the measured SD ``s``, the two-sided paired
t-test at level alpha rejects "no difference" with probability

    power(delta, n) = P(T > c) + P(T < -c),   T ~ noncentral t(df = n - 1, nc = delta * sqrt(n) / s),
    c = t_{1 - alpha/2, n - 1}

(the same formula as statsmodels' ``TTestPower`` and G*Power's
one-sample / matched-pairs t-test). From it the report gives, per
comparison:

* the **minimum detectable effect**: the true mean difference that the test
  with these n units detects with 80 % power at alpha = 0.05;
* the **units needed** to detect the paper's gain, +1.17 IoU points
  (Mujtaba et al. 2025: 0.8974 -> 0.9091), with 80 % power, if the SD of the
  differences stays what was measured.

Neither can be estimated with n < 2 (no SD) or when every difference is the
same (SD 0); the note says which. The measured SD is itself uncertain with
few seeds: these are planning figures, not guarantees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

ALPHA = 0.05
POWER = 0.80
PAPER_GAIN = 1.17  # IoU points, Mujtaba et al. (arXiv 2503.00945): U-Net 0.8974 -> 0.9091 with EssNet images
MAX_UNITS = 1_000_000  # beyond this, "more than" is all that is worth saying
INDEPENDENT_LEVELS = ("seed", "patient")  # (seed, patient) pairs reuse patients: no power figure for them


def power_paired(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs for a standardised effect ``effect`` (= delta / SD)."""
    from scipy import stats

    if n < 2:
        return math.nan
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    # The lower tail P(T < -c) is written as P(-T > c), -T ~ nct(df, -nc): scipy's nct.cdf returns NaN
    # far in the lower tail (e.g. df 1, nc 11.3), its sf does not.
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def detectable_effect(n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The standardised effect (delta / SD) that ``n`` pairs detect with ``power``; NaN when n < 2."""
    from scipy.optimize import brentq

    if n < 2:
        return math.nan
    hi = 1.0
    while power_paired(hi, n, alpha) < power:  # power grows with the effect: bracket, then solve
        hi *= 2
    return float(brentq(lambda d: power_paired(d, n, alpha) - power, 0.0, hi, xtol=1e-10, rtol=1e-12))


def units_needed(effect: float, power: float = POWER, alpha: float = ALPHA, max_n: int = MAX_UNITS) -> int | None:
    """The smallest n >= 2 whose paired t-test detects the standardised ``effect`` with ``power``.

    None when even ``max_n`` pairs are not enough (or the effect is 0).
    """
    effect = abs(effect)
    if effect == 0 or math.isnan(effect):
        return None
    if power_paired(effect, 2, alpha) >= power:
        return 2
    lo, hi = 2, 4  # power(lo) < target <= power(hi): double, then bisect (power grows with n)
    while power_paired(effect, hi, alpha) < power:
        if hi >= max_n:
            return None
        lo, hi = hi, min(2 * hi, max_n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power_paired(effect, mid, alpha) >= power else (mid, hi)
    return hi


@dataclass(frozen=True)
class PowerFigures:
    """What one comparison can detect: ``mde`` in the unit of the differences, ``n_needed`` units for the target."""

    mde: float
    n_needed: int | None
    note: str


def power_figures(n: int, sd: float, target: float | None = PAPER_GAIN) -> PowerFigures:
    """Minimum detectable effect (80 % power, alpha 0.05) with ``n`` pairs of SD ``sd``, and the pairs
    needed to detect ``target`` (same unit as ``sd``; None: not asked)."""
    if n < 2 or sd is None or math.isnan(sd):
        return PowerFigures(math.nan, None, f"cannot be estimated (n < 2: n = {n})")
    if sd < 1e-9:  # the paired test itself is undefined: every difference equal
        return PowerFigures(math.nan, None, "cannot be estimated (all differences equal: SD 0)")
    mde = detectable_effect(n) * sd
    if target is None:
        return PowerFigures(mde, None, "")
    need = units_needed(target / sd)
    return PowerFigures(mde, need, "" if need is not None else f"more than {MAX_UNITS:,} needed")


def with_power(comps: pl.DataFrame, target_metric: str = "iou", target: float = PAPER_GAIN) -> pl.DataFrame:
    """Add ``mde`` (80 % power, alpha 0.05, unit of ``mean_diff``), ``n_needed`` (units to detect ``target``
    in ``target_metric``; null for other metrics) and ``power_note`` to a comparisons table.

    Only the independent levels (seed; patient of a pooled k-fold sweep) get figures: (seed, patient)
    pairs share patients across seeds, so a t-test power over them would be optimistic.
    """
    rows: list[dict[str, Any]] = []
    for r in comps.iter_rows(named=True):
        if r["level"] not in INDEPENDENT_LEVELS:
            rows.append({"mde": None, "n_needed": None, "power_note": "not for (seed, patient) pairs"})
            continue
        fig = power_figures(int(r["n"]), r["sd_diff"], target if r["metric"] == target_metric else None)
        rows.append({"mde": None if math.isnan(fig.mde) else fig.mde, "n_needed": fig.n_needed,
                     "power_note": fig.note})
    extra = pl.DataFrame(rows, schema={"mde": pl.Float64, "n_needed": pl.Int64, "power_note": pl.String})
    return pl.concat([comps, extra], how="horizontal")
