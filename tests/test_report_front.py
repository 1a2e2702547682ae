"""The front of the report (findings, the comparison table, the key figures) and report.html, on the known
store of report_fixtures (3 arms x 3-5 seeds, 4 patients, a failed trial), checked against numbers computed
here independently with numpy/scipy."""

from __future__ import annotations

import base64
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from report_fixtures import (
    CYCLEGAN_IOU,
    ESSNET_IOU,
    NONE_IOU,
    PATIENTS,
    KnownStore,
    TrialSpec,
    build_custom_store,
    dice_of,
    known_store,
    patient_iou,
)
from scipy import stats as sps

from liverlab.report import findings, power, stats
from liverlab.report.arms import control_pairs
from liverlab.report.markdown import make_report
from liverlab.tracking.reader import download_artifact, list_artifacts

D3 = 3.264043552819638  # statsmodels TTestPower().solve_power(nobs=3, alpha=0.05, power=0.8) (test_report_power.py)
D5 = 1.6819970833232674  # the same for nobs=5


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> tuple[KnownStore, Path, str]:
    store = known_store()
    md = make_report(store.uri, parent_run_id=store.parent_run_id, out=tmp_path_factory.mktemp("front") / "report",
                     n_boot=500)
    return store, md.parent, md.read_text()


def _needed(delta: float, sd: float) -> int:
    """Seeds a two-sided paired t-test needs for 80 % power, by a plain upward search (independent of liverlab)."""
    n = 2
    while True:
        crit, nc = sps.t.ppf(0.975, n - 1), delta / sd * math.sqrt(n)
        if sps.nct.sf(crit, n - 1, nc) + sps.nct.sf(crit, n - 1, -nc) >= 0.8:
            return n
        n += 1


def _diff(values: list[float]) -> tuple[np.ndarray, float, float]:
    d = (np.asarray(values) - np.asarray(NONE_IOU[: len(values)])) * 100
    lo, hi = sps.t.interval(0.95, d.size - 1, loc=d.mean(), scale=sps.sem(d))
    return d, lo, hi


def _bullets(md: str) -> list[str]:
    return [line for line in md.split("## Findings\n")[1].split("\n## ")[0].splitlines() if line.startswith("- ")]


def test_findings_open_the_report(known: tuple[KnownStore, Path, str]) -> None:
    _, _, md = known
    assert md.startswith("# Sweep report: known\n\n## Findings\n")
    lines = _bullets(md)
    assert len(lines) == 4 <= findings.MAX_LINES
    # A failed trial comes first.
    assert lines[0] == "- **1 of 15 trials did not finish** (1 failed: `synthesis=essnet` seed 5); the numbers below " \
                       "use the 14 finished."
    d, lo, hi = _diff(CYCLEGAN_IOU)
    sd = d.std(ddof=1)
    assert lines[1] == (f"- **real + CycleGAN** vs real only: {d.mean():+.2f} IoU points, "
                        f"95 % CI [{lo:+.2f}, {hi:+.2f}]: "
                        f"**no detectable difference at n = 3 seeds** (3 seeds detect ±{D3 * sd:.2f} points with 80 % "
                        f"power; the paper's +1.17 needs {_needed(1.17, sd)} seeds).")
    d, lo, hi = _diff(ESSNET_IOU)
    assert lines[2] == (f"- **real + EssNet** vs real only: +2.40 IoU points, 95 % CI [{lo:+.2f}, {hi:+.2f}]: "
                        "**better** (n = 5 seeds).")
    # Worst patient: the lowest mean IoU over every selected unit's result (13 units x 4 patients).
    results = {p: [] for p in PATIENTS}
    for offset, seeds in ((0.0, 5), (0.03, 5), (0.01, 3)):
        for s in range(seeds):
            for p, v in zip(PATIENTS, patient_iou(offset, s)):
                results[p].append(v)
    worst = min(results, key=lambda p: np.mean(results[p]))
    assert lines[3].startswith(f"- **Worst patient**: {worst}, mean test IoU {np.mean(results[worst]):.3f} over its 13 "
                               f"results (lowest {min(results[worst]):.3f}: real only, seed 0).")
    assert lines[3].endswith("**Outliers** (Dice < 0.5 or |RAVD| > 50 %): none of 52 per-patient results.")


def test_one_comparison_table_then_the_key_figures(known: tuple[KnownStore, Path, str]) -> None:
    _, _, md = known
    section = md.split("\n## Comparison with the baseline\n")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[0] == ("| arm | n | IoU mean [95 % CI] | Dice mean | Δ IoU vs real only, points [95 % CI] | p "
                       "| verdict | detectable at 80 % power | seeds for +1.17 |")
    assert len(rows) == 2 + 3  # header, rule, one row per arm
    none = np.asarray(NONE_IOU)
    lo, hi = sps.t.interval(0.95, 4, loc=none.mean(), scale=sps.sem(none))
    assert rows[2] == (f"| real only | 5 | {none.mean():.4f} [{lo:.4f}, {hi:.4f}] | "
                       f"{np.mean([dice_of(v) for v in none]):.4f} | baseline |  |  |  |  |")
    ess = np.asarray(ESSNET_IOU)
    lo, hi = sps.t.interval(0.95, 4, loc=ess.mean(), scale=sps.sem(ess))
    d, dlo, dhi = _diff(ESSNET_IOU)
    p = sps.ttest_rel(ess * 100, none * 100).pvalue
    assert rows[4] == (f"| real + EssNet | 5 | {ess.mean():.4f} [{lo:.4f}, {hi:.4f}] | "
                       f"{np.mean([dice_of(v) for v in ess]):.4f} | {d.mean():+.2f} [{dlo:+.2f}, {dhi:+.2f}] | "
                       f"{p:.3g} | "
                       f"better | ±{D5 * d.std(ddof=1):.2f} | {_needed(1.17, d.std(ddof=1))} |")
    assert rows[3].startswith("| real + CycleGAN | 3 |") and "| no detectable difference at n = 3 seeds |" in rows[3]
    # The figures come right after the table: IoU per arm first; the others further down.
    after = md.split("\n## Comparison with the baseline\n")[1].split("\n## ", 1)[1]
    assert after.startswith("Figures\n\n### IoU per arm\n\n![iou_distributions](iou_distributions.png)")
    assert md.index("## More figures") > md.index("## Per-patient results") > md.index("## Figures")
    assert md.index("## Appendix") > md.index("](learning_curves.png)")


def test_partial_sweep_comes_first(known: tuple[KnownStore, Path, str], tmp_path: Path) -> None:
    store, _, _ = known
    md = make_report(store.uri, parent_run_id=store.parent_run_id, out=tmp_path / "r", n_boot=100,
                     log_to_parent=False, planned_trials=20).read_text()
    assert _bullets(md)[0] == ("- **Partial sweep: 14 of 20 planned trials finished** (1 failed, 5 not run: "
                               "`synthesis=essnet` seed 5); the numbers below use the 14 finished.")
    assert "- Runs: 15 of 20 planned (1 failed, 14 finished)" in md


def test_planned_trials_from_the_parent_tag(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    trials = [TrialSpec(f"synthesis={s}", seed, 0.7 + 0.01 * seed + (0.02 if s == "essnet" else 0))
              for s in ("none", "essnet") for seed in range(2)]
    store = build_custom_store(tmp_path / "store", "tagged", trials)
    md = make_report(store.uri, parent_run_id=store.parent_run_id, out=tmp_path / "r0", n_boot=100,
                     log_to_parent=False).read_text()
    assert "Partial sweep" not in md and "did not finish" not in md  # complete: nothing to say first
    MlflowClient(store.uri).set_tag(store.parent_run_id, "liverlab.planned_trials", "6")
    md = make_report(store.uri, parent_run_id=store.parent_run_id, out=tmp_path / "r1", n_boot=100,
                     log_to_parent=False).read_text()
    assert _bullets(md)[0] == ("- **Partial sweep: 4 of 6 planned trials finished** (2 not run); the numbers below "
                               "use the 4 finished.")


def test_many_arms_are_grouped_by_verdict() -> None:
    gains = {"a": [3, 4, 5], "b": [-5, -4, -6], "c": [1, -1, 0.5], "d": [2, -2, 1], "e": [6, 5, 7], "f": [0, 1, -1]}
    rows = [{"run_id": f"n{s}", "arm": "synthesis=none", "seed": s, "metric.test/iou": 0.7 + 0.01 * s}
            for s in range(3)]
    for name, g in gains.items():
        rows += [{"run_id": f"{name}{s}", "arm": f"synthesis=essnet,x={name}", "seed": s,
                  "metric.test/iou": 0.7 + 0.01 * s + g[s] / 100} for s in range(3)]
    units = pl.DataFrame(rows)
    comps = power.with_power(stats.paired_comparisons(units, "synthesis=none", None, metrics=("iou",)))
    control = power.with_power(stats.paired_comparisons(units, control_pairs(units), None, metrics=("iou",)))
    lines = findings.findings_lines(comps, control, None, pooled=False, status="")
    bullets = [line for line in lines if line.startswith("- ")]
    assert len(bullets) == 4 <= findings.MAX_LINES  # 3 verdict lines + "no per-patient tables"
    assert bullets[0].startswith("- **Better** than real only (IoU points, 95 % CI): real + EssNet (x a) +4.00 [")
    assert "real + EssNet (x e) +6.00" in bullets[0]
    assert bullets[1].startswith("- **Worse** than real only (IoU points, 95 % CI): real + EssNet (x b) -5.00 [")
    assert bullets[2].startswith("- **No detectable difference** from real only (IoU points, 95 % CI): ")
    assert bullets[2].count("(n = 3)") == 3


class _Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.src += [v or "" for k, v in attrs if k == "src"]


def test_report_html_embeds_its_images_and_is_logged(known: tuple[KnownStore, Path, str], tmp_path: Path) -> None:
    store, out, md = known
    page = (out / "report.html").read_text()
    parsed = _Sources()
    parsed.feed(page)
    images = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(parsed.src) == len(images) == 5
    assert not {"script", "link", "iframe"} & parsed.tags
    prefix = "data:image/png;base64,"
    for src, name in zip(parsed.src, images):
        assert src.startswith(prefix) and base64.b64decode(src[len(prefix):]) == (out / name).read_bytes(), name
    assert "<h2>Findings</h2>" in page and "<table>" in page and "no detectable difference at n = 3 seeds" in page
    # Logged beside report.md on the sweep's parent run, byte for byte.
    logged = list_artifacts(store.uri, store.parent_run_id, "report")
    assert "report/report.html" in logged and "report/report.md" in logged
    got = download_artifact(store.uri, store.parent_run_id, "report/report.html", tmp_path)
    assert got is not None and got.read_bytes() == (out / "report.html").read_bytes()
