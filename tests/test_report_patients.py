"""The report's per-patient section (median, worst case, outliers) and the EssNet vs intensity-control verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from report_fixtures import TrialSpec, build_custom_store
from scipy import stats as sps

from liverlab.report import findings, power, stats
from liverlab.report import patients as section
from liverlab.report.arms import control_pairs
from liverlab.report.markdown import make_report


def _long(rows: list[dict]) -> pl.DataFrame:
    """Literal wide per-patient rows -> the long form the report reads."""
    out = []
    for r in rows:
        for m in ("iou", "dice", "ravd", "assd", "mssd"):
            out.append({"run_id": r["run_id"], "arm": r["arm"], "seed": r["seed"], "fold": None,
                        "patient_id": r["patient_id"], "metric": m, "value": r[m]})
    return pl.DataFrame(out, schema={"run_id": pl.String, "arm": pl.String, "seed": pl.Int64, "fold": pl.Int64,
                                     "patient_id": pl.String, "metric": pl.String, "value": pl.Float64})


ROWS = [
    {"run_id": "r0aaaaaaaa", "arm": "synthesis=none", "seed": 0, "patient_id": "p1",
     "iou": 0.80, "dice": 8 / 9, "ravd": 4.0, "assd": 1.0, "mssd": 6.0},
    {"run_id": "r0aaaaaaaa", "arm": "synthesis=none", "seed": 0, "patient_id": "p2",
     "iou": 0.00, "dice": 0.0, "ravd": 99.5, "assd": 30.0, "mssd": 80.0},
    {"run_id": "r1bbbbbbbb", "arm": "synthesis=none", "seed": 1, "patient_id": "p1",
     "iou": 0.70, "dice": 14 / 17, "ravd": 55.0, "assd": 2.0, "mssd": 9.0},
    {"run_id": "r1bbbbbbbb", "arm": "synthesis=none", "seed": 1, "patient_id": "p2",
     "iou": 0.60, "dice": 0.75, "ravd": 10.0, "assd": 3.0, "mssd": 12.0},
]


def test_spread_and_outliers_known_answers():
    pp = _long(ROWS)
    spread = {r["metric"]: r for r in section.spread_table(pp).iter_rows(named=True)}
    assert spread["iou"]["mean"] == pytest.approx(0.525) and spread["iou"]["median"] == pytest.approx(0.65)
    assert spread["iou"]["worst"] == 0.0 and spread["ravd"]["worst"] == 99.5 and spread["mssd"]["worst"] == 80.0
    flagged = section.outlier_table(pp)
    assert flagged.select("seed", "patient_id", "flag").rows() == [
        (0, "p2", "Dice 0.00 < 0.5; |RAVD| 99.5 % > 50 %"),
        (1, "p1", "|RAVD| 55.0 % > 50 %"),
    ]
    text = "\n".join(section.markdown_lines(pp))
    assert "**2 of 4 per-patient results are outliers**" in text
    # The pipes of |RAVD| are escaped: they would split the Markdown table cell.
    assert "| real only | 0 | `r0aaaaaa` | p2 | 0.0000 | 99.5000 | Dice 0.00 < 0.5; \\|RAVD\\| 99.5 % > 50 % |" in text
    assert "| arm | results | IoU | Dice | ASSD (mm) | MSSD (mm) | RAVD |" in text
    assert "| real only | 4 | 0.5250 / 0.6500 / 0.0000 | " in text  # IoU: mean / median / worst
    assert "No per-patient tables" in "\n".join(section.markdown_lines(pp.head(0)))


def test_worst_patient_known_answer():
    worst = section.worst_patient(_long(ROWS))
    # p1: (0.80 + 0.70) / 2 = 0.75, p2: (0.00 + 0.60) / 2 = 0.30 -> p2, lowest result 0.00 (seed 0).
    assert worst == {"patient_id": "p2", "mean": pytest.approx(0.30), "n": 2, "low": 0.0,
                     "low_arm": "synthesis=none", "low_seed": 0}
    line = findings.patient_line(_long(ROWS))
    assert line.startswith("**Worst patient**: p2, mean test IoU 0.300 over its 2 results "
                           "(lowest 0.000: real only, seed 0).")
    assert "2 of 4 per-patient results: p2 (real only, seed 0); p1 (real only, seed 1)." in line
    assert section.worst_patient(None) is None
    assert "No per-patient tables" in findings.patient_line(None)


def test_control_pairs_match_the_other_factors():
    units = pl.DataFrame({"arm": ["synthesis=essnet,unet.mixing_ratio=1", "synthesis=intensity,unet.mixing_ratio=1",
                                  "synthesis=essnet,unet.mixing_ratio=2", "synthesis=none,unet.mixing_ratio=0"]})
    assert control_pairs(units) == {"synthesis=essnet,unet.mixing_ratio=1": "synthesis=intensity,unet.mixing_ratio=1"}
    assert control_pairs(pl.DataFrame({"arm": ["synthesis=essnet", "synthesis=none"]})) == {}


def _units(essnet: list[float], control: list[float]) -> pl.DataFrame:
    rows = [{"run_id": f"{a}{s}", "arm": f"synthesis={a}", "seed": s, "metric.test/iou": v}
            for a, vals in (("essnet", essnet), ("intensity", control)) for s, v in enumerate(vals)]
    return pl.DataFrame(rows)


def _control(units: pl.DataFrame) -> pl.DataFrame:
    return power.with_power(stats.paired_comparisons(units, control_pairs(units), None, metrics=("iou",)))


def test_control_verdicts():
    tie = _control(_units([0.80, 0.82, 0.78], [0.81, 0.80, 0.79]))
    line = findings.control_line(tie, pooled=False)
    half = sps.t.ppf(0.975, 2) * np.std([-1, 2, -1], ddof=1) / np.sqrt(3)  # differences -1, +2, -1 points
    assert line == (f"**EssNet vs the intensity control**: +0.00 IoU points, 95 % CI [{-half:+.2f}, {half:+.2f}]: "
                    "**EssNet does not beat the control** (no detectable difference at n = 3 seeds).")
    table = "\n".join(findings.control_section(tie, pooled=False))
    assert f"| real + EssNet | real + intensity remap | 3 seeds | +0.00 [{-half:+.2f}, {half:+.2f}] |" in table
    worse = findings.control_line(_control(_units([0.70, 0.72, 0.71], [0.80, 0.83, 0.81])), pooled=False)
    assert "**EssNet is worse than the control**" in worse
    better = findings.control_line(_control(_units([0.90, 0.93, 0.91], [0.80, 0.82, 0.81])), pooled=False)
    assert "EssNet beats the control" in better and "does not beat" not in better
    empty = _control(_units([0.9], []))
    assert findings.control_line(empty, pooled=False) == "" and findings.control_section(empty, pooled=False) == []


def test_report_has_per_patient_section_and_control_verdict(tmp_path: Path):
    trials = []
    for seed in range(3):
        trials.append(TrialSpec("synthesis=none", seed, 0.70 + 0.01 * seed, {"p1": 0.72, "p2": 0.68}))
        trials.append(
            TrialSpec("synthesis=essnet", seed, 0.74 + 0.01 * seed, {"p1": 0.76, "p2": 0.10 if seed == 0 else 0.72})
        )
        trials.append(TrialSpec("synthesis=intensity", seed, [0.73, 0.77, 0.75][seed], {"p1": 0.77, "p2": 0.73}))
    store = build_custom_store(tmp_path / "store", "ctrl", trials)
    md = make_report(
        store.uri, parent_run_id=store.parent_run_id, out=tmp_path / "report", log_to_parent=False, n_boot=200
    )
    text = md.read_text()
    assert "## EssNet vs the non-GAN control (synthesis: intensity)" in text
    half = sps.t.ppf(0.975, 2) * np.std([1, -2, 1], ddof=1) / np.sqrt(3)  # essnet - intensity: +1, -2, +1 points
    assert (f"- **EssNet vs the intensity control**: +0.00 IoU points, 95 % CI [{-half:+.2f}, {half:+.2f}]: **EssNet "
            "does not beat the control** (no detectable difference at n = 3 seeds).") in text
    assert "## Per-patient results" in text and "### Outliers (Dice < 0.5 or |RAVD| > 50 %)" in text
    assert "**1 of 18 per-patient results are outliers**" in text
    assert "| real + EssNet | 0 |" in text and "| p2 | 0.1818 |" in text
    # p2: real only 0.68 x 3, EssNet 0.10, 0.72, 0.72, intensity 0.73 x 3: mean 5.77 / 9.
    assert ("**Worst patient**: p2, mean test IoU 0.641 over its 9 results "
            "(lowest 0.100: real + EssNet, seed 0).") in text
