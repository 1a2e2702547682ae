"""The analysis/ scripts: --help, and real output on the known store (run as subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_fixtures import ESSNET_IOU, NONE_IOU, known_store
from scipy import stats as sps

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("compare_sweeps.py", "latex_table.py", "learning_curves.py")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    proc = _run(f"analysis/{script}", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "SWEEP" in proc.stdout


def test_compare_sweeps(tmp_path: Path) -> None:
    store = known_store()
    out = tmp_path / "cmp.csv"
    proc = _run("analysis/compare_sweeps.py", str(store.sweep_dir), "known", "--tracking-uri", store.uri,
                "--format", "csv", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    import polars as pl

    table = pl.read_csv(out)
    assert table["arm"].to_list() == ["synthesis=cyclegan", "synthesis=essnet", "synthesis=none"]
    ess = table.filter(pl.col("arm") == "synthesis=essnet").row(0, named=True)
    assert ess["n_a"] == ess["n_b"] == 5
    assert ess["mean_a"] == pytest.approx(np.mean(ESSNET_IOU))
    assert ess["diff_b_minus_a"] == pytest.approx(0.0, abs=1e-9)  # the same sweep twice
    proc = _run("analysis/compare_sweeps.py", str(store.sweep_dir), str(store.sweep_dir))
    assert proc.returncode == 0 and "| synthesis=none | 5 | 0.8000 [" in proc.stdout
    bad = _run("analysis/compare_sweeps.py", str(tmp_path / "nope"), str(store.sweep_dir))
    assert bad.returncode == 2 and "no such sweep folder" in bad.stderr


def test_latex_table() -> None:
    store = known_store()
    proc = _run("analysis/latex_table.py", str(store.sweep_dir), "--metrics", "iou")
    assert proc.returncode == 0, proc.stderr
    tex = proc.stdout
    assert tex.startswith(r"\begin{tabular}") and r"\end{tabular}" in tex
    lo, hi = sps.t.interval(0.95, 4, loc=np.mean(NONE_IOU), scale=sps.sem(NONE_IOU))
    assert f"real only & 5 & 0.8000 [{lo:.4f}, {hi:.4f}] \\\\" in tex
    raw = _run("analysis/latex_table.py", str(store.sweep_dir), "--raw-arms", "--interval", "bootstrap")
    assert raw.returncode == 0 and "synthesis=essnet & 5 &" in raw.stdout and "bootstrap" in raw.stdout


def test_learning_curves(tmp_path: Path) -> None:
    store = known_store()
    out = tmp_path / "lc.png"
    proc = _run("analysis/learning_curves.py", str(store.sweep_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.size == (800, 500)
    none = _run("analysis/learning_curves.py", str(store.sweep_dir), "--key", "val/absent", "--out", str(out))
    assert none.returncode == 2 and "no val/absent history" in none.stderr
