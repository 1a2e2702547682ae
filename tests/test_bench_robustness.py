"""benchmarks/bench_robustness.py: the perturbed datasets it scores and the drops it reports (known answers)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_robustness as br  # noqa: E402


def test_summary_drops_interval_and_patients_over_the_limit() -> None:
    scores = {"clean": {"a": 0.9, "b": 0.8, "c": 0.7}, "gamma0.6": {"a": 0.85, "b": 0.6, "c": 0.7}}
    res = br.summary(scores, max_drop=0.10)
    r = res["gamma0.6"]
    assert res["clean_iou"] == pytest.approx(0.8)
    assert r["iou"] == pytest.approx(0.7166667, abs=1e-6)
    assert r["per_patient_drop"] == pytest.approx({"a": 0.05, "b": 0.2, "c": 0.0})
    assert r["drop_mean"] == pytest.approx(0.25 / 3)
    lo, hi = r["drop_ci95"]
    assert lo < r["drop_mean"] < hi and hi - lo == pytest.approx(2 * 4.302653 * np.std([0.05, 0.2, 0.0], ddof=1)
                                                                 / np.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    assert (r["worst_patient"], r["over_max_drop"]) == ("b", ["b"])
    assert set(res) == {"clean_iou", "gamma0.6"}


def test_perturbed_dataset_changes_images_only(tmp_path: Path) -> None:
    import nibabel as nib

    src = tmp_path / "raw"
    src.mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 5.0, 1.0])
    for cid in ("1", "2"):
        image = rng.uniform(10, 500, size=(16, 16, 4)).astype(np.float32)
        label = np.zeros((16, 16, 4), np.uint8)
        label[4:10, 5:12, 1:3] = 1
        nib.save(nib.Nifti1Image(image, affine), src / f"image_{cid}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), src / f"label_{cid}.nii.gz")
    spec = {"kind": "nifti", "images": str(src / "image_*.nii.gz"), "labels": str(src / "label_*.nii.gz"),
            "modality": "mri", "liver_label": 1}
    clean = br.perturbed_dataset(spec, "clean", tmp_path / "work")
    dark = br.perturbed_dataset(spec, "gamma1.6", tmp_path / "work")
    assert clean == tmp_path / "work" / "clean" / "mri" and (dark / "dataset.json").is_file()
    for cid in ("mri_1", "mri_2"):
        c_img = nib.load(clean / "imagesTr" / f"{cid}_0000.nii.gz").get_fdata()
        d_img = nib.load(dark / "imagesTr" / f"{cid}_0000.nii.gz").get_fdata()
        m = c_img.max()
        np.testing.assert_allclose(d_img, m * (c_img / m) ** 1.6, rtol=1e-4)
        np.testing.assert_array_equal(nib.load(clean / "labelsTr" / f"{cid}.nii.gz").get_fdata(),
                                      nib.load(dark / "labelsTr" / f"{cid}.nii.gz").get_fdata())
    stamp = (dark / "dataset.json").stat().st_mtime_ns
    assert br.perturbed_dataset(spec, "gamma1.6", tmp_path / "work") == dark  # reused, not imported again
    assert (dark / "dataset.json").stat().st_mtime_ns == stamp


def test_bad_perturbation_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        br.main(["--cv", "runs/none", "--perturb", "gamma0.6,blur"])
    assert e.value.code == 2 and "unknown perturbation 'blur'" in capsys.readouterr().err
