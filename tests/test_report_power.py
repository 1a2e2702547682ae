"""The power of the report's paired t-test, against a standard power computation and a simulation.

Reference values: statsmodels 0.15.0 (scipy 1.17.1), ``statsmodels.stats.power.TTestPower`` (one-sample /
paired t-test, ``alternative="two-sided"``, ``alpha=0.05``), computed once and written here as literals:

    TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8)          -> effect size detectable with n pairs
    TTestPower().solve_power(effect_size=d, alpha=0.05, power=0.8)   -> pairs needed (a float; round up)
    TTestPower().power(effect_size=d, nobs=n, alpha=0.05)            -> power

The pairs needed for d = 0.5 and 0.8 (34 and 15) are also G*Power's matched-pairs values.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from liverlab.report import power, stats

# n -> standardised effect detectable with 80 % power (statsmodels solve_power(nobs=n)).
DETECTABLE = {2: 11.549889754978167, 3: 3.264043552819638, 5: 1.6819970833232674, 10: 0.9960019107624178,
              20: 0.6604416544380312}
# d -> pairs needed (statsmodels solve_power(effect_size=d), a float).
NEEDED = {0.25: 127.51583051555221, 0.5: 33.36713118431779, 0.8: 14.30276455812943, 1.0: 9.93785094105438}
# (d, n) -> power (statsmodels power()).
POWER = {(0.5, 10): 0.2931756065140767, (1.0, 5): 0.4013899173717948, (0.3, 50): 0.5476570389705147}


@pytest.mark.parametrize(("d", "n"), sorted(POWER))
def test_power_matches_statsmodels(d: float, n: int) -> None:
    assert power.power_paired(d, n) == pytest.approx(POWER[(d, n)], rel=1e-9)


@pytest.mark.parametrize("n", sorted(DETECTABLE))
def test_detectable_effect_matches_statsmodels(n: int) -> None:
    assert power.detectable_effect(n) == pytest.approx(DETECTABLE[n], rel=1e-5)  # both solvers stop at ~1e-7
    assert power.power_paired(power.detectable_effect(n), n) == pytest.approx(0.8, abs=1e-9)


@pytest.mark.parametrize("d", sorted(NEEDED))
def test_units_needed_is_the_rounded_up_statsmodels_value(d: float) -> None:
    n = power.units_needed(d)
    assert n == math.ceil(NEEDED[d])
    assert power.power_paired(d, n) >= 0.8 > power.power_paired(d, n - 1)  # the smallest such n


def test_detectable_effect_by_simulation() -> None:
    """An independent check: paired t-tests on simulated differences at the MDE reject 80 % of the time."""
    from scipy import stats as sps

    n, sd, sims = 5, 2.0, 40_000
    fig = power.power_figures(n, sd)
    rng = np.random.default_rng(7)
    d = rng.normal(fig.mde, sd, size=(sims, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    rate = float(np.mean(np.abs(t) > sps.t.ppf(0.975, n - 1)))
    assert rate == pytest.approx(0.8, abs=0.01)  # binomial SE 0.002


def test_power_figures_in_the_unit_of_the_differences() -> None:
    fig = power.power_figures(5, 2.0)  # SD of the differences: 2 IoU points
    assert fig.mde == pytest.approx(DETECTABLE[5] * 2.0, rel=1e-5) and fig.note == ""
    assert fig.n_needed == power.units_needed(power.PAPER_GAIN / 2.0) == 25
    assert power.power_figures(5, 2.0, target=None).n_needed is None


def test_power_cannot_be_estimated() -> None:
    one = power.power_figures(1, math.nan)
    assert math.isnan(one.mde) and one.n_needed is None and one.note == "cannot be estimated (n < 2: n = 1)"
    flat = power.power_figures(4, 0.0)
    assert math.isnan(flat.mde) and flat.note == "cannot be estimated (all differences equal: SD 0)"
    huge = power.power_figures(3, 1e6)  # +1.17 points against an SD of 10^6 points
    assert huge.n_needed is None and huge.note == "more than 1,000,000 needed"
    assert power.units_needed(0.0) is None and math.isnan(power.detectable_effect(1))


def test_with_power_columns() -> None:
    units = pl.DataFrame({"run_id": [f"r{i}" for i in range(8)],
                          "arm": ["synthesis=none"] * 4 + ["synthesis=essnet"] * 4,
                          "seed": [0, 1, 2, 3] * 2, "metric.test/iou": [0.80, 0.82, 0.78, 0.81, 0.83, 0.83, 0.80, 0.84],
                          "metric.test/dice": [0.88, 0.89, 0.87, 0.88, 0.90, 0.90, 0.88, 0.91]})
    comps = power.with_power(stats.paired_comparisons(units, "synthesis=none", None, metrics=("iou", "dice")))
    iou = comps.filter(pl.col("metric") == "iou").row(0, named=True)
    d = np.array([3.0, 1.0, 2.0, 3.0])  # essnet - none, IoU points
    assert iou["mde"] == pytest.approx(power.detectable_effect(4) * d.std(ddof=1), rel=1e-9)
    assert iou["n_needed"] == power.units_needed(1.17 / d.std(ddof=1)) and iou["power_note"] == ""
    dice = comps.filter(pl.col("metric") == "dice").row(0, named=True)
    assert dice["mde"] is not None and dice["n_needed"] is None  # the +1.17 target is in IoU points only
