"""benchmarks/bench_search.py at its smallest setting (issue 22), so the benchmark cannot rot.

Runs the real command: a local Ray, liverlab's train_unet in Tune trials, the
grid and TPE + ASHA on 4 tiny configurations; then reads its results back.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_search.py"
ASHA_RUN = "tpe_asha-g1-rf2-b050-r0"


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *extra], cwd=out.parent,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_smoke_benchmark_measures_regret_and_compute_and_resumes(tmp_path):
    out = tmp_path / "bench"
    run = _run(out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    assert set(results) == {"grid", ASHA_RUN}

    grid, asha = results["grid"], results[ASHA_RUN]
    max_t = grid["max_t"]
    assert max_t == 3 and len(grid["trials"]) == 4
    assert len({json.dumps(t["params"], sort_keys=True) for t in grid["trials"]}) == 4  # every configuration once
    for t in grid["trials"]:  # the grid trains every configuration to the end and tests it
        assert t["completed"] and len(t["reports"]) == max_t and 0.0 <= t["test"]["test/iou"] <= 1.0

    # ASHA stops trials at a rung; the trials that reach max_t still run their test evaluation.
    assert asha["rungs"] == [1.0, 2.0]
    for t in asha["trials"]:
        assert len(t["reports"]) in (1, 2, max_t) and t["trial_s"] > 0
        assert t["completed"] == (len(t["reports"]) == max_t) == ("test/iou" in t["test"])
    assert any(t["completed"] for t in asha["trials"])
    rounds = sum(len(t["reports"]) for t in asha["trials"])
    assert asha["budget_rounds"] == 2 * max_t  # half of the 4-configuration grid
    assert rounds <= asha["budget_rounds"] + 2 * max_t  # at most the two running trials' promotions over

    rows = {r["run"]: r for r in csv.DictReader((out / "results.csv").open())}
    row = rows[ASHA_RUN]
    assert float(row["compute_s"]) == pytest.approx(sum(t["trial_s"] for t in asha["trials"]), rel=1e-6)
    grid_s = sum(t["trial_s"] for t in grid["trials"])
    assert float(row["compute_frac"]) == pytest.approx(float(row["compute_s"]) / grid_s, rel=1e-6)
    # Regret is against the grid's validation pick, in IoU points.
    best = max((t for t in grid["trials"]), key=lambda t: t["reports"][-1]["val/iou"])
    assert float(row["test_regret_points"]) == pytest.approx(
        100 * (best["test"]["test/iou"] - float(row["pick_test_iou"])), abs=1e-9)
    assert float(rows["grid"]["test_regret_points"]) == 0.0
    summary = (out / "summary.md").read_text()
    assert "| tpe_asha-g1-rf2 | 50 % | 1 |" in summary and "| grid | 100 % | 1 |" in summary
    assert (out / "regret.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resumable: every run is done, so a second call runs nothing and rewrites only the summary.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    again = _run(out)
    assert again.returncode == 0 and "2 already done" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")} == before
    # Results of other settings are never mixed into the folder.
    refused = subprocess.run([sys.executable, str(SCRIPT), "--size", "medium", "--out", str(out), "--summary-only"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert refused.returncode == 2 and "other settings" in refused.stderr
