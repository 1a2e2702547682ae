"""The report's per-patient section (median, worst case, outliers) and the EssNet vs intensity-control verdict."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from liverlab.report import patients as section
from liverlab.report.markdown import _comparison_sentence, make_report
from report_fixtures import TrialSpec, build_custom_store


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
    {"run_id": "r0aaaaaaaa", "arm": "synthesis=none", "seed": 0, "patient_id": "p1", "iou": 0.80, "dice": 8 / 9, "ravd": 4.0, "assd": 1.0, "mssd": 6.0},
    {"run_id": "r0aaaaaaaa", "arm": "synthesis=none", "seed": 0, "patient_id": "p2", "iou": 0.00, "dice": 0.0, "ravd": 99.5, "assd": 30.0, "mssd": 80.0},
    {"run_id": "r1bbbbbbbb", "arm": "synthesis=none", "seed": 1, "patient_id": "p1", "iou": 0.70, "dice": 14 / 17, "ravd": 55.0, "assd": 2.0, "mssd": 9.0},
    {"run_id": "r1bbbbbbbb", "arm": "synthesis=none", "seed": 1, "patient_id": "p2", "iou": 0.60, "dice": 0.75, "ravd": 10.0, "assd": 3.0, "mssd": 12.0},
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
    assert "| real only | 0 | `r0aaaaaa` | p2 | 0.0000 | 99.5000 | Dice 0.00 < 0.5; |RAVD| 99.5 % > 50 % |" in text
    assert "| real only | IoU | 4 | 0.5250 | 0.6500 | 0.0000 |" in text
    assert "No per-patient tables" in "\n".join(section.markdown_lines(pp.head(0)))


def test_control_pairs_match_the_other_factors():
    units = pl.DataFrame({"arm": ["synthesis=essnet,unet.mixing_ratio=1", "synthesis=intensity,unet.mixing_ratio=1",
                                  "synthesis=essnet,unet.mixing_ratio=2", "synthesis=none,unet.mixing_ratio=0"]})
    assert section.control_pairs(units) == {
        "synthesis=essnet,unet.mixing_ratio=1": "synthesis=intensity,unet.mixing_ratio=1"}
    assert section.control_pairs(pl.DataFrame({"arm": ["synthesis=essnet", "synthesis=none"]})) == {}


def _units(essnet: list[float], control: list[float]) -> pl.DataFrame:
    rows = [{"run_id": f"{a}{s}", "arm": f"synthesis={a}", "seed": s, "metric.test/iou": v}
            for a, vals in (("essnet", essnet), ("intensity", control)) for s, v in enumerate(vals)]
    return pl.DataFrame(rows)


def test_control_verdicts():
    tie = "\n".join(section.control_lines(_units([0.80, 0.82, 0.78], [0.81, 0.80, 0.79]), None, False,
                                          _comparison_sentence))
    assert "**EssNet does not beat the intensity control** (the 95 % interval of the difference includes 0)" in tie
    assert "n = 3 seeds" in tie
    worse = "\n".join(section.control_lines(_units([0.70, 0.72, 0.71], [0.80, 0.83, 0.81]), None, False,
                                            _comparison_sentence))
    assert "it is worse** (the 95 % interval is below 0)" in worse
    better = "\n".join(section.control_lines(_units([0.90, 0.93, 0.91], [0.80, 0.82, 0.81]), None, False,
                                             _comparison_sentence))
    assert "EssNet beats the intensity control" in better and "does not beat the intensity control" not in better
    assert section.control_lines(_units([0.9], []), None, False, _comparison_sentence) == []


def test_report_has_per_patient_section_and_control_verdict(tmp_path: Path):
    trials = []
    for seed in range(3):
        trials.append(TrialSpec("synthesis=none", seed, 0.70 + 0.01 * seed, {"p1": 0.72, "p2": 0.68}))
        trials.append(TrialSpec("synthesis=essnet", seed, 0.74 + 0.01 * seed, {"p1": 0.76, "p2": 0.10 if seed == 0 else 0.72}))
        trials.append(TrialSpec("synthesis=intensity", seed, [0.73, 0.77, 0.75][seed], {"p1": 0.77, "p2": 0.73}))
    store = build_custom_store(tmp_path / "store", "ctrl", trials)
    md = make_report(store.uri, parent_run_id=store.parent_run_id, out=tmp_path / "report", log_to_parent=False, n_boot=200)
    text = md.read_text()
    assert "## EssNet vs the non-GAN control (synthesis: intensity)" in text
    assert "**real + EssNet vs real + intensity remap**: **EssNet does not beat the intensity control** (the 95 % interval of the difference includes 0)" in text
    assert "## Per-patient results" in text and "### Outliers (Dice < 0.5 or |RAVD| > 50 %)" in text
    assert "**1 of 18 per-patient results are outliers**" in text
    assert "| real + EssNet | 0 |" in text and "| p2 | 0.1818 |" in text
