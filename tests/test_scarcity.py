"""The data-scarcity factor: ``data.train_patients`` subsets, and the report's scarcity curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from liverlab.config import ExperimentConfig, config_from_dict
from liverlab.errors import LiverlabError
from liverlab.train import data as tdata
from liverlab.train.data import train_patient_subset

IDS = [f"p{i}" for i in range(1, 9)]


def tiny_config(root: Path, **overrides: object) -> ExperimentConfig:
    """Only the data section matters here (the tiny phantoms of conftest: 32 x 32)."""
    return config_from_dict({"data": {"root": str(root), "size": 32}}, dict(overrides))


def test_subsets_are_nested_with_known_members() -> None:
    # default_rng(0).permutation(8) = [2, 4, 3, 6, 5, 0, 1, 7]: p3, p5, p4, p7, p6, p1, p2, p8.
    assert train_patient_subset(IDS, 1, 0) == ["p3"]
    assert train_patient_subset(IDS, 2, 0) == ["p3", "p5"]
    assert train_patient_subset(IDS, 4, 0) == ["p3", "p4", "p5", "p7"]
    for seed in range(5):
        sets = [set(train_patient_subset(IDS, n, seed)) for n in (1, 2, 4, 8)]
        assert sets[0] < sets[1] < sets[2] < sets[3] == set(IDS)
    # The order of the input does not matter (ids are sorted first); another seed draws others.
    assert train_patient_subset(list(reversed(IDS)), 2, 0) == ["p3", "p5"]
    assert train_patient_subset(IDS, 2, 1) == ["p1", "p6"]


def test_all_and_none_keep_every_patient() -> None:
    assert train_patient_subset(IDS, "all", 3) == IDS
    assert train_patient_subset(set(IDS), None, 3) == IDS
    assert train_patient_subset(IDS, 8, 3) == IDS


def test_too_many_patients_is_a_clear_error() -> None:
    with pytest.raises(LiverlabError, match=r"data.train_patients = 9 is more than the 8 training patient"):
        train_patient_subset(IDS, 9, 0)


def test_config_validates_train_patients(tmp_path: Path) -> None:
    assert tiny_config(tmp_path, **{"data.train_patients": "all"}).data.train_patients == "all"
    assert tiny_config(tmp_path, **{"data.train_patients": 3}).data.train_patients == 3
    for bad in (0, "some", 1.5):
        with pytest.raises(LiverlabError, match="data.train_patients"):
            tiny_config(tmp_path, **{"data.train_patients": bad})


def test_unet_training_slices_come_from_the_subset(phantom_root: Path) -> None:
    mri = phantom_root / "mri"
    full = tiny_config(phantom_root)
    train_patients = sorted(tdata.split_table(mri, full).filter(pl.col("split") == "train")["patient_id"].to_list())
    everyone = tdata.load(full, mri, "mri", "train")
    assert sorted({str(c) for c in everyone.case_ids}) == sorted(tdata.cases_in(mri, full, "train"))
    for seed in (0, 1):
        got: list[set[str]] = []
        for n in (1, 2):
            cfg = tiny_config(phantom_root, **{"data.train_patients": n, "seed": seed})
            expect = train_patient_subset(train_patients, n, seed)
            cases = tdata.train_patient_cases(mri, cfg)
            table = tdata.split_table(mri, cfg)
            patients = dict(zip(table["case_id"].to_list(), table["patient_id"].to_list()))
            assert sorted({patients[c] for c in cases}) == expect
            sl = tdata.load(cfg, mri, "mri", "train")
            assert sorted({str(c) for c in sl.case_ids}) == cases
            assert 0 < len(sl) < len(everyone) or len(expect) == len(train_patients)
            got.append(set(cases))
        assert got[0] < got[1]
    # Validation and test patients are untouched by the factor.
    cfg = tiny_config(phantom_root, **{"data.train_patients": 1})
    assert np.array_equal(np.asarray(tdata.load(cfg, mri, "mri", "test", all_slices=True).images),
                          np.asarray(tdata.load(full, mri, "mri", "test", all_slices=True).images))
    too_many = tiny_config(phantom_root, **{"data.train_patients": len(train_patients) + 1})
    with pytest.raises(LiverlabError, match="data.train_patients"):
        tdata.load(too_many, mri, "mri", "train")


# ----------------------------------------------------------------------------- the report's scarcity curve

SIZES = ["1", "2", "4", "all"]
BASE = {"1": 0.50, "2": 0.60, "4": 0.70, "all": 0.75}
GAIN = {"1": [5.0, 6.0, 7.0], "2": [3.0, 4.0, 3.5], "4": [1.0, -1.0, 0.5], "all": [0.5, -0.5, 0.0]}  # points


@pytest.fixture(scope="module")
def scarcity_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from report_fixtures import TrialSpec, build_custom_store

    from liverlab.cli import main as cli_main

    trials = []
    for size in SIZES:
        for seed in range(3):
            base = BASE[size] + 0.01 * seed
            trials.append(TrialSpec(f"data.train_patients={size},synthesis=none", seed, base))
            trials.append(TrialSpec(f"data.train_patients={size},synthesis=essnet", seed,
                                    base + GAIN[size][seed] / 100))
    root = tmp_path_factory.mktemp("scarcity")
    store = build_custom_store(root / "store", "scarcity", trials)
    out = root / "report"
    assert cli_main(["report", str(store.sweep_dir), "--out", str(out), "--no-log", "--bootstrap", "200"]) == 0
    return out


def test_scarcity_table_has_known_numbers(scarcity_report: Path) -> None:
    from scipy import stats as sps

    table = pl.read_csv(scarcity_report / "scarcity.csv", schema_overrides={"size": pl.String})
    assert table.height == 8
    assert table.filter(pl.col("line") == "synthesis=essnet")["size"].to_list() == SIZES
    for size in SIZES:
        none = table.filter((pl.col("line") == "synthesis=none") & (pl.col("size") == size)).row(0, named=True)
        assert none["mean"] == pytest.approx(BASE[size] + 0.01) and none["n"] == 3 and none["over"] == "seed"
        assert none["diff"] is None  # the baseline line
        row = table.filter((pl.col("line") == "synthesis=essnet") & (pl.col("size") == size)).row(0, named=True)
        d = np.asarray(GAIN[size])
        # Paired with the real-only arm of the SAME size, over seeds.
        assert row["baseline"] == f"data.train_patients={size},synthesis=none" and row["level"] == "seed"
        assert row["n_pairs"] == 3 and row["diff"] == pytest.approx(d.mean(), abs=1e-9)
        lo, hi = sps.t.interval(0.95, 2, loc=d.mean(), scale=sps.sem(d))
        assert (row["diff_lo"], row["diff_hi"]) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9))
        y = BASE[size] + 0.01 * np.arange(3) + d / 100
        lo, hi = sps.t.interval(0.95, 2, loc=y.mean(), scale=sps.sem(y))
        assert (row["t_lo"], row["t_hi"]) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9))


def test_scarcity_report_states_the_crossing_and_draws_the_curve(scarcity_report: Path) -> None:
    from PIL import Image

    md = (scarcity_report / "report.md").read_text()
    assert "## Data scarcity: test IoU vs real training patients" in md
    assert ("real + EssNet helps at 1, 2 patients and **stops helping from 4 patients** (the 95 % CI includes or "
            "is below 0 there and at every larger size).") in md
    assert "| real + EssNet | 1 | 3 seeds | 0.5700 | [" in md and "| +6.00 | [" in md
    # The curve is a key figure: right after the comparison table, and only there.
    assert md.count("](data_scarcity.png)") == 1
    assert "![data_scarcity](data_scarcity.png)" in md.split("## Figures")[1].split("\n## ")[0]
    # The comparisons section pairs each size with its own real-only arm, never with another size.
    assert "`data.train_patients=4,synthesis=essnet` vs `data.train_patients=4,synthesis=none`" in md
    assert "`data.train_patients=1,synthesis=essnet` vs `data.train_patients=4" not in md
    with Image.open(scarcity_report / "data_scarcity.png") as im:
        assert im.format == "PNG" and im.size == (800, 500)


def _table(lows: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"line": ["synthesis=essnet"] * len(lows), "size": SIZES[: len(lows)],
                         "diff": [1.0] * len(lows), "diff_lo": lows})


def test_crossing_sentences() -> None:
    from liverlab.report.scarcity import crossing

    assert "helps at every size tested (1, 2, 4, all patients)" in crossing(_table([0.1, 0.2, 0.3, 0.4]))[
        "synthesis=essnet"]
    assert "does not help at any size tested" in crossing(_table([-0.1, 0.0, -0.3, -0.4]))["synthesis=essnet"]
    # Helps again at the largest size: it never stops helping.
    text = crossing(_table([0.1, -0.2, -0.3, 0.4]))["synthesis=essnet"]
    assert "helps at 1, all patients, including the largest size; it does not at 2, 4" in text
    # Not at 1, at 2, then never again: stops from 4.
    text = crossing(_table([-0.1, 0.2, -0.3, float("nan")]))["synthesis=essnet"]
    assert "helps at 2 patients and **stops helping from 4 patients**" in text
    assert "no interval at all" in text
