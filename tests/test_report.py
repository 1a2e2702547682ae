"""The report on a store with known values, checked against numpy/scipy computed here independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from report_fixtures import (
    CYCLEGAN_IOU,
    ESSNET_IOU,
    NONE_IOU,
    PATIENTS,
    KnownStore,
    dice_of,
    fresh_uri,
    known_store,
    patient_iou,
)
from scipy import stats as sps

from liverlab.cli import main as cli_main
from liverlab.errors import LiverlabError
from liverlab.report import arms, stats
from liverlab.report import units as unit_rows
from liverlab.report.markdown import make_report
from liverlab.tracking.reader import list_artifacts
from liverlab.tracking.writer import finish_sweep_run, open_sweep_run, open_trial_run

FIGURES = ("iou_vs_mixing_ratio", "iou_distributions", "shape_preservation", "learning_curves")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[KnownStore, Path]:
    store = known_store()
    out = tmp_path_factory.mktemp("rep") / "report"
    rc = cli_main(["report", str(store.sweep_dir), "--out", str(out)])
    assert rc == 0
    return store, out


def _t_ci(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x)
    return sps.t.interval(0.95, a.size - 1, loc=a.mean(), scale=sps.sem(a))


def test_per_arm_means_and_intervals(report: tuple[KnownStore, Path]) -> None:
    _, out = report
    summary = pl.read_csv(out / "summary.csv")
    for arm, values in (("synthesis=none", NONE_IOU), ("synthesis=essnet", ESSNET_IOU),
                        ("synthesis=cyclegan", CYCLEGAN_IOU)):
        for metric, vals in (("iou", values), ("dice", [dice_of(v) for v in values])):
            row = summary.filter((pl.col("arm") == arm) & (pl.col("metric") == metric)).row(0, named=True)
            x = np.asarray(vals)
            assert row["n"] == x.size
            assert row["source"] == "test"
            assert row["mean"] == pytest.approx(x.mean(), abs=1e-12)  # the worse extra Optuna sample is set aside
            assert row["sd"] == pytest.approx(x.std(ddof=1), abs=1e-12)
            lo, hi = _t_ci(vals)
            assert (row["t_lo"], row["t_hi"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
            # An independent bootstrap (other seed): percentile bounds agree to Monte Carlo error.
            rng = np.random.default_rng(12345)
            means = x[rng.integers(0, x.size, size=(20000, x.size))].mean(axis=1)
            blo, bhi = np.percentile(means, [2.5, 97.5])
            assert row["boot_lo"] == pytest.approx(blo, abs=0.004)
            assert row["boot_hi"] == pytest.approx(bhi, abs=0.004)
            assert row["boot_lo"] >= x.min() - 1e-12 and row["boot_hi"] <= x.max() + 1e-12


def test_paired_differences_against_baseline(report: tuple[KnownStore, Path]) -> None:
    _, out = report
    comps = pl.read_csv(out / "comparisons.csv")
    for arm, values in (("synthesis=essnet", ESSNET_IOU), ("synthesis=cyclegan", CYCLEGAN_IOU)):
        a = np.asarray(values) * 100
        b = np.asarray(NONE_IOU[: len(values)]) * 100  # shared seeds only
        d = a - b
        row = comps.filter((pl.col("arm") == arm) & (pl.col("metric") == "iou") & (pl.col("level") == "seed")).row(
            0, named=True)
        assert row["baseline"] == "synthesis=none" and row["unit"] == "points"
        assert row["n"] == len(values)
        assert row["mean_diff"] == pytest.approx(d.mean(), abs=1e-9)
        lo, hi = sps.t.interval(0.95, d.size - 1, loc=d.mean(), scale=sps.sem(d))
        assert row["t_lo"] == pytest.approx(lo, abs=1e-9) and row["t_hi"] == pytest.approx(hi, abs=1e-9)
        assert row["t_p"] == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-6)
        assert row["w_p"] == pytest.approx(sps.wilcoxon(np.round(d, 10)).pvalue, rel=1e-6)
        assert row["d_z"] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-6)
    essnet = comps.filter((pl.col("arm") == "synthesis=essnet") & (pl.col("metric") == "iou")
                          & (pl.col("level") == "seed")).row(0, named=True)
    assert essnet["mean_diff"] == pytest.approx(2.4)
    assert "smallest two-sided Wilcoxon p is 0.0625" in essnet["note"]  # n = 5 cannot reach 0.05


def test_paired_differences_over_patients(report: tuple[KnownStore, Path]) -> None:
    _, out = report
    comps = pl.read_csv(out / "comparisons.csv")
    row = comps.filter((pl.col("arm") == "synthesis=essnet") & (pl.col("metric") == "iou")
                       & (pl.col("level") == "seed x patient")).row(0, named=True)
    a = np.array([v for s in range(5) for v in patient_iou(0.03, s)]) * 100
    b = np.array([v for s in range(5) for v in patient_iou(0.0, s)]) * 100
    d = np.round(a - b, 10)
    assert row["n"] == 5 * len(PATIENTS)
    assert row["mean_diff"] == pytest.approx(d.mean(), abs=1e-9)
    assert row["t_p"] == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-6)
    assert row["w_p"] == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-6)
    assert row["d_z"] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-6)


def test_report_markdown_names_baseline_and_n(report: tuple[KnownStore, Path]) -> None:
    store, out = report
    md = (out / "report.md").read_text()
    assert "baseline `synthesis=none`" in md
    assert "Sweep `known`" in md and "`abc123`" in md and "`m123`" in md
    assert "| training data | images | Dice | IoU |" in md
    assert "| real + EssNet | 350 real + 714 synthetic | 0.9034 | 0.8240 |" in md
    assert "| real only | 350 real | 0.8888 | 0.8000 |" in md
    assert "- **real + EssNet** vs real only: +2.40 IoU points, 95 % CI [+0.98, +3.82]: **better** (n = 5 seeds)." in md
    # The appendix has every metric and pairing as table rows (not bullets), with n in words.
    appendix = md.split("### Paired comparisons, every metric and pairing")[1]
    assert ("| real + EssNet | real only | IoU (points) | seeds | 5 | +2.40 [+0.98, +3.82] | 0.00926 | 0.0625 "
            "| 2.10 |") in appendix
    assert "| real + EssNet | real only | IoU (points) | (seed, patient) pairs | 20 |" in appendix
    assert "| real + CycleGAN | real only | ASSD (mm) | seeds | 3 |" in appendix
    assert not [line for line in appendix.splitlines() if line.startswith("- **")]
    assert "1 extra Optuna samples set aside" in md and "1 failed" in md
    # Every per-arm interval row carries its n.
    per_arm = md.split("### Per-arm results, every metric")[1].split("###")[0]
    rows = [line for line in per_arm.splitlines() if line.startswith("| real")]
    assert rows and all(line.split("|")[4].strip() in ("3", "5") for line in rows)
    for name in FIGURES + ("translation_panel",):
        assert f"]({name}.png)" in md


def test_figures_are_pngs_of_the_fixed_size(report: tuple[KnownStore, Path]) -> None:
    store, out = report
    for name in FIGURES:
        path = out / f"{name}.png"
        assert path.stat().st_size > 5000, name
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (800, 500), name
    # The translation panel is the last panel of the best EssNet run (seed 3: test IoU 0.85).
    with Image.open(out / "translation_panel.png") as im:
        px = np.asarray(im)
    assert px.shape == (20, 60) and int(px[0, 0]) == 10 * 3 + 2
    assert store.run_ids[("synthesis=essnet", 3)] in (out / "report.md").read_text()


def test_results_tables_and_parent_artifacts(report: tuple[KnownStore, Path]) -> None:
    store, out = report
    results = pl.read_parquet(out / "results.parquet")
    assert results.height == 15 and results["selected"].sum() == 13
    assert results["run_id"].n_unique() == 15
    assert store.extra_run_id not in results.filter(pl.col("selected"))["run_id"].to_list()
    assert pl.read_csv(out / "results.csv").height == 15
    logged = list_artifacts(store.uri, store.parent_run_id, "report")
    assert "report/report.md" in logged and "report/iou_distributions.png" in logged
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".report.")]  # no temp folders left


def test_baseline_override_and_unknown_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = known_store()
    md = make_report(store.uri, parent_run_id=store.parent_run_id, baseline="synthesis=cyclegan",
                     out=tmp_path / "r", n_boot=200, log_to_parent=False)
    text = md.read_text()
    assert "baseline `synthesis=cyclegan` (chosen with --baseline)" in text
    comps = pl.read_csv(tmp_path / "r" / "comparisons.csv")
    row = comps.filter((pl.col("arm") == "synthesis=essnet") & (pl.col("metric") == "iou")
                       & (pl.col("level") == "seed")).row(0, named=True)
    assert row["n"] == 3 and row["mean_diff"] == pytest.approx((np.array(ESSNET_IOU[:3]) - CYCLEGAN_IOU).mean() * 100)
    rc = cli_main(["report", str(store.sweep_dir), "--baseline", "synthesis=nope", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "synthesis=nope" in err and "synthesis=none" in err and "synthesis=essnet" in err
    assert not (tmp_path / "x").exists()


def test_report_by_experiment_name(tmp_path: Path) -> None:
    store = known_store()
    rc = cli_main(["report", "known", "--tracking-uri", store.uri, "--out", str(tmp_path / "r"), "--no-log",
                   "--bootstrap", "200"])
    assert rc == 0
    assert "**better** (n = 5 seeds)" in (tmp_path / "r" / "report.md").read_text()


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli_main(["report", str(tmp_path / "missing" / "dir")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "liverlab_sweep.json" in capsys.readouterr().err
    assert cli_main(["report", "some-experiment"]) == 2
    assert "--tracking-uri" in capsys.readouterr().err

    uri = fresh_uri(tmp_path / "store")
    exp_id, parent = open_sweep_run(uri, "bad", {"liverlab.sweep_key": "b"})
    with pytest.raises(LiverlabError, match="no runs"):
        make_report(uri, parent_run_id=parent, out=tmp_path / "r1")
    t = open_trial_run(uri, exp_id, parent, "t", {"liverlab.arm": "synthesis=none", "liverlab.seed": "0"})
    t.finish("FAILED", error="boom")
    finish_sweep_run(uri, parent)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "liverlab_sweep.json").write_text(json.dumps(
        {"name": "bad", "tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent}))
    assert cli_main(["report", str(sweep)]) == 2
    assert "no finished runs" in capsys.readouterr().err and not (sweep / "report").exists()


def test_failed_write_keeps_the_old_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = known_store()
    out = tmp_path / "r"
    make_report(store.uri, parent_run_id=store.parent_run_id, out=out, n_boot=100, log_to_parent=False)
    before = (out / "report.md").read_text()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("liverlab.report.figures.all_figures", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        make_report(store.uri, parent_run_id=store.parent_run_id, out=out, n_boot=100, log_to_parent=False)
    assert (out / "report.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# ----------------------------------------------------------------------------- stats units


def test_paired_test_edge_cases() -> None:
    one = stats.paired_test(np.array([0.8]), np.array([0.7]))
    assert one["n"] == 1 and math.isnan(one["t_p"]) and "no interval or test" in one["note"]
    zeros = stats.paired_test(np.array([0.8, 0.7, 0.9]), np.array([0.8, 0.7, 0.9]), scale=100)
    assert zeros["mean_diff"] == 0 and math.isnan(zeros["t_p"]) and math.isnan(zeros["w_p"])
    assert "all differences zero: Wilcoxon undefined" in zeros["note"]
    equal = stats.paired_test(np.array([0.81, 0.71, 0.91]), np.array([0.8, 0.7, 0.9]), scale=100)
    assert equal["mean_diff"] == pytest.approx(1.0) and math.isnan(equal["d_z"])
    assert "all differences equal" in equal["note"] and not math.isnan(equal["w_p"])
    some_zero = stats.paired_test(np.array([1.0, 2.0, 3.0, 5.0, 9.0, 4.0]), np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]))
    assert "dropped 1 zero difference" in some_zero["note"]
    assert some_zero["w_p"] == pytest.approx(sps.wilcoxon([0.0, 1, 2, 4, 8, 3]).pvalue)


def test_infinite_values_are_counted_not_averaged() -> None:
    runs = pl.DataFrame({"run_id": list("abc"), "arm": ["synthesis=none"] * 3, "seed": [0, 1, 2],
                         "metric.test/assd": [1.0, float("inf"), 3.0]})
    row = stats.arm_summary(runs, ["assd"], n_boot=100).row(0, named=True)
    assert (row["n"], row["n_inf"], row["mean"]) == (2, 1, 2.0)
    res = stats.paired_test(np.array([1.0, np.inf, 3.0, 4.0]), np.array([0.5, 1.0, 2.0, 2.0]))
    assert res["n"] == 3 and res["mean_diff"] == pytest.approx((0.5 + 1 + 2) / 3)
    assert "1 pair(s) with an infinite value left out" in res["note"]


def test_test_columns_never_hold_validation_values() -> None:
    runs = pl.DataFrame({
        "run_id": ["a", "b", "c"], "arm": ["synthesis=none"] * 3, "seed": [0, 1, 2],
        "metric.test/iou": [0.8, None, None], "best.val/iou": [0.7, 0.75, 0.72],
    })
    vals = unit_rows.metric_values(runs, ["iou"])
    assert vals["value.iou"].to_list() == [0.8, None, None]  # no fallback to best.val
    assert vals["val.iou"].to_list() == [0.7, 0.75, 0.72]
    test = stats.arm_summary(runs, ["iou"], n_boot=100).row(0, named=True)
    assert (test["source"], test["n"], test["mean"]) == ("test", 1, 0.8)
    val = stats.arm_summary(runs, ["iou"], n_boot=100, split="val").row(0, named=True)
    assert val["source"] == "best val" and val["n"] == 3 and val["mean"] == pytest.approx((0.7 + 0.75 + 0.72) / 3)


def test_select_units_and_arm_helpers() -> None:
    runs = pl.DataFrame({"run_id": list("abcd"), "arm": ["x=1", "x=1", "x=1", None], "seed": [0, 0, 1, None],
                         "best.val/iou": [0.5, 0.9, 0.1, 0.3]})
    units = unit_rows.select_units(runs)
    assert sorted(units["run_id"].to_list()) == ["b", "c", "d"]
    assert units.filter(pl.col("run_id") == "d")["arm"][0] == unit_rows.NO_ARM
    assert arms.arm_factors("synthesis=essnet,unet.mixing_ratio=0.5") == {"synthesis": "essnet",
                                                                          "unet.mixing_ratio": "0.5"}
    assert arms.arm_label("synthesis=essnet,unet.mixing_ratio=0.5") == "real + EssNet (mixing ratio 0.5)"
    assert arms.arm_label("synthesis=none") == "real only"
    base, note = arms.resolve_baseline(pl.DataFrame({"arm": ["synthesis=essnet"]}), None)
    assert base is None and "--baseline" in note


def test_known_store_reads_back() -> None:
    from liverlab.tracking.reader import read_runs

    store = known_store()
    runs = read_runs(store.uri, "known", parent_run_id=store.parent_run_id)
    assert runs.height == 5 + 5 + 3 + 2
    assert sorted(runs["status"].unique().to_list()) == ["FAILED", "FINISHED"]
    none = runs.filter(pl.col("arm") == "synthesis=none").sort("seed")
    assert none["metric.test/iou"].to_list() == NONE_IOU
    assert none["seed"].to_list() == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- k-fold pooling

FOLD_PATIENTS = [f"p{i}" for i in range(1, 7)]  # fold k tests p(2k+1), p(2k+2)


def _fold_iou(arm: str, patient: int, seed: int) -> float:
    base = 0.70 + 0.01 * patient + 0.005 * seed
    return base + (0.02 + 0.002 * patient if arm == "essnet" else 0.0)


@pytest.fixture(scope="module")
def fold_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[KnownStore, Path]:
    from report_fixtures import TrialSpec, build_custom_store

    trials = []
    for synth in ("none", "essnet", "cyclegan"):
        for seed in (0, 1):
            for fold in range(3):
                if synth == "cyclegan" and seed == 1:
                    continue
                ids = (2 * fold + 1, 2 * fold + 2)
                pp = {f"p{i}": _fold_iou(synth, i, seed) for i in ids}
                test = None if synth == "cyclegan" else float(np.mean(list(pp.values())))
                trials.append(TrialSpec(f"data.split.fold={fold},synthesis={synth}", seed, test,
                                        None if synth == "cyclegan" else pp, val_iou=0.6 + 0.01 * fold,
                                        set={"data.split.folds": 3}))
    root = tmp_path_factory.mktemp("folds")
    store = build_custom_store(root / "store", "folds", trials)
    out = root / "report"
    assert cli_main(["report", str(store.sweep_dir), "--out", str(out), "--no-log", "--bootstrap", "500"]) == 0
    return store, out


def test_folds_are_pooled_not_compared(fold_report: tuple[KnownStore, Path]) -> None:
    _, out = fold_report
    summary = pl.read_csv(out / "summary.csv")
    assert sorted(summary["arm"].unique().to_list()) == ["synthesis=essnet", "synthesis=none"]  # no fold arms
    for synth in ("none", "essnet"):
        row = summary.filter((pl.col("arm") == f"synthesis={synth}") & (pl.col("metric") == "iou")).row(0, named=True)
        # Over patients: each patient's mean over the 2 seeds, 6 patients (every one tested once per seed).
        per_patient = [np.mean([_fold_iou(synth, i, s) for s in (0, 1)]) for i in range(1, 7)]
        assert row["over"] == "patient" and row["n"] == 6 and row["source"] == "test"
        assert row["mean"] == pytest.approx(np.mean(per_patient), abs=1e-9)
        lo, hi = _t_ci(per_patient)
        assert (row["t_lo"], row["t_hi"]) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9))
    results = pl.read_parquet(out / "results.parquet")
    assert results.height == 15 and results["selected"].sum() == 15


def test_fold_pooled_paired_levels(fold_report: tuple[KnownStore, Path]) -> None:
    _, out = fold_report
    comps = pl.read_csv(out / "comparisons.csv").filter((pl.col("arm") == "synthesis=essnet")
                                                        & (pl.col("metric") == "iou"))
    by = {r["level"]: r for r in comps.iter_rows(named=True)}
    assert set(by) == {"seed", "patient", "seed x patient"}
    d_patient = np.array([100 * (0.02 + 0.002 * i) for i in range(1, 7)])
    assert by["patient"]["n"] == 6 and by["patient"]["mean_diff"] == pytest.approx(d_patient.mean())
    lo, hi = _t_ci(list(d_patient))
    assert (by["patient"]["t_lo"], by["patient"]["t_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert by["seed x patient"]["n"] == 12 and by["seed"]["n"] == 2
    assert by["seed"]["mean_diff"] == pytest.approx(d_patient.mean())  # pooled unit = mean over 6 patients
    md = (out / "report.md").read_text()
    assert "**Pooled over 3 folds**" in md and "15 fold runs -> 5 units" in md
    # The verdict and the table use the patient level (the primary one of a pooled sweep).
    assert (f"vs real only: {d_patient.mean():+.2f} IoU points, 95 % CI [{lo:+.2f}, {hi:+.2f}]: **better** "
            "(n = 6 patients).") in md
    assert "| real + EssNet | 6 patients | " in md.split("## Comparison with the baseline")[1].split("##")[0]
    assert "| patients for +1.17 |" in md
    assert "6 patients" in md.split("### Per-arm results")[1].split("##")[0]
    # The cyclegan arm logged no test metrics: missing from the test tables, shown under validation only.
    assert "## Validation only (units without test metrics)" in md
    val = md.split("## Validation only")[1].split("##")[0]
    assert "| real + CycleGAN | IoU | best val | 1 | 0.6100 |" in val  # mean over folds of 0.60, 0.61, 0.62
    assert "no test metrics in any fold" in md


def test_pool_folds_warns_about_missing_and_repeated_patients() -> None:
    from liverlab.report import folds

    units = unit_rows.metric_values(unit_rows.with_arm(pl.DataFrame({
        "run_id": ["a", "b", "c"], "arm": [f"data.split.fold={k},synthesis=none" for k in (0, 1, 1)],
        "seed": [0, 0, 1], "metric.test/iou": [0.5, 0.7, 0.6], "param.data.split.folds": [2, 2, 2]})), ["iou"])
    assert units["arm"].to_list() == ["synthesis=none"] * 3 and units["fold"].to_list() == [0, 1, 1]
    pp = pl.DataFrame({"run_id": ["a", "b", "b", "c"], "patient_id": ["p1", "p1", "p2", "p2"],
                       "metric": ["iou"] * 4, "value": [0.4, 0.6, 0.8, 0.6]})
    pooled, notes = folds.pool_folds(units, folds.patient_rows(pp, units), ["iou"])
    assert pooled["value.iou"].to_list() == [pytest.approx(0.6), pytest.approx(0.6)]  # (0.4+0.6+0.8)/3; 0.6
    assert pooled["n_patients"].to_list() == [2, 1] and pooled["n_folds"].to_list() == [2, 1]
    text = " | ".join(notes)
    assert "seed 0: patient(s) p1 tested in more than one fold" in text
    assert "seed 1: fold(s) 0 of 2 missing" in text
    assert "seed 1: patient(s) p1 tested in other units but not here" in text


def test_arms_sharing_a_synthesis_get_distinct_line_styles() -> None:
    from liverlab.report.figures import _line_styles

    arms_ = ["essnet.generator.upsample=nearest,synthesis=cyclegan",
             "essnet.generator.upsample=nearest,synthesis=essnet",
             "essnet.generator.upsample=transpose,synthesis=cyclegan",
             "essnet.generator.upsample=transpose,synthesis=essnet"]
    styles = _line_styles(arms_)
    assert len(set(styles)) == 4
    # the colour still says the synthesis: same kind, same colour, another line style
    assert styles[0][0] == styles[2][0] != styles[1][0] == styles[3][0]
    assert (styles[0][1], styles[2][1]) == ("-", "--")
    # one arm per synthesis: every line solid, colours distinct
    single = _line_styles(["synthesis=none", "synthesis=cyclegan", "synthesis=essnet"])
    assert [ls for _, ls in single] == ["-", "-", "-"] and len({c for c, _ in single}) == 3
