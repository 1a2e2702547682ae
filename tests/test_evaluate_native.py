"""One evaluation grid: training's test metrics == `liverlab evaluate --checkpoint` == the written masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from conftest import TINY, ReportLog
from liverlab.cli import main
from liverlab.config import PostprocessConfig, config_from_dict, read_yaml
from liverlab.data.nifti import load_volume
from liverlab.errors import LiverlabError
from liverlab.train import data as tdata
from liverlab.infer.evaluate import METRICS, case_metrics, evaluate_files, native_case_metrics, predict_slices
from liverlab.infer.segment import load_unet, segment_dataset
from liverlab.train.unet import train_unet


def _config(root: Path, context_slices: int = 0, **overrides: object):
    raw = read_yaml(TINY)
    raw["data"]["root"] = str(root)
    raw["data"].pop("phantom", None)
    # A 16 x 16 training grid on 32 x 32 volumes, so the native grid differs from the training one.
    raw["data"]["size"] = 16
    # 30 steps at a high learning rate: a poor but non-empty prediction (test IoU ~0.46), so the
    # equalities below compare finite, non-trivial numbers.
    raw["unet"] = {"model": {"depth": 2, "base_features": 4, "context_slices": context_slices}, "iterations": 30, "val_every": 30, "batch_size": 4,
                   "optim": {"lr": 1e-2}}
    return config_from_dict(raw, dict(overrides), source=str(TINY))


@pytest.fixture(scope="module")
def trained(phantom_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("unet_native")
    config = _config(phantom_root)
    metrics = train_unet(config, ReportLog(), None, work)
    return config, work, metrics


@pytest.fixture(scope="module")
def trained_bf16(phantom_root, tmp_path_factory):
    """The CHAOS recipe's numerics: bf16 autocast and a channels-last model."""
    work = tmp_path_factory.mktemp("unet_native_bf16")
    config = _config(phantom_root, precision="bf16", channels_last=True)
    metrics = train_unet(config, ReportLog(), None, work)
    return config, work, metrics


@pytest.fixture(scope="module")
def trained_25d(phantom_root, tmp_path_factory):
    """A 2.5D U-Net (one slice above and below as channels)."""
    work = tmp_path_factory.mktemp("unet_native_25d")
    config = _config(phantom_root, context_slices=1)
    metrics = train_unet(config, ReportLog(), None, work)
    return config, work, metrics


def _by_case(rows: list[dict]) -> dict[str, dict]:
    return {r["case_id"]: r for r in rows}


@pytest.mark.parametrize("run", ["trained", "trained_bf16", "trained_25d"])
def test_training_test_metrics_equal_evaluate_checkpoint_and_files(run, request, phantom_root, tmp_path, capsys):
    config, work, metrics = request.getfixturevalue(run)
    table = pl.read_parquet(work / "per_patient.parquet")
    logged = _by_case(table.to_dicts())
    test_cases = tdata.cases_in(config.data.mri_dir, config, "test")
    assert sorted(logged) == test_cases and len(test_cases) >= 1
    assert metrics["test/iou"] == pytest.approx(table["iou"].mean(), abs=1e-9)
    assert all(0 < r["iou"] < 1 and np.isfinite(r["mssd"]) for r in logged.values()), logged

    out = tmp_path / "pred"
    segmented = _by_case(segment_dataset(work / "best.pt", phantom_root / "mri", out, "test"))
    labels = phantom_root / "mri" / "labelsTr"
    files = _by_case([r for c in test_cases for r in evaluate_files(out / f"{c}.nii.gz", labels / f"{c}.nii.gz")])
    assert main(["evaluate", "--checkpoint", str(work / "best.pt"), "--data", str(phantom_root / "mri"),
                 "--split", "test", "--out", str(tmp_path / "cli"), "--json"]) == 0
    cli = _by_case(json.loads(capsys.readouterr().out)["cases"])
    for case in test_cases:
        for k in METRICS:
            assert segmented[case][k] == pytest.approx(logged[case][k], abs=1e-6), (case, k)
            assert files[case][k] == pytest.approx(logged[case][k], abs=1e-6), (case, k)
            assert cli[case][k] == pytest.approx(logged[case][k], abs=1e-6), (case, k)
        # The written mask is on the case's own grid (32 x 32 x 8), not the 16 x 16 training grid.
        mask = load_volume(out / f"{case}.nii.gz")
        image = load_volume(phantom_root / "mri" / "imagesTr" / f"{case}_0000.nii.gz")
        assert mask.image.shape == image.image.shape == (32, 32, 8)
        assert np.allclose(mask.affine, image.affine)
    # Only finished masks in the output folder: no staging leftovers.
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}.nii.gz" for c in test_cases)


def test_native_metrics_are_not_the_training_grid_ones(trained, phantom_root):
    """The two grids really differ (so the test above is not trivially true), and
    post-processing changes nothing on a perfect prediction."""
    config, work, _ = trained
    model, _ = load_unet(work / "best.pt", torch.device("cpu"))
    slices = tdata.load(config, config.data.mri_dir, "mri", "test", all_slices=True)
    native = native_case_metrics(model, slices, config.data.mri_dir, torch.device("cpu"))
    coarse = case_metrics(slices, predict_slices(model, np.asarray(slices.images), torch.device("cpu")))
    assert [r["case_id"] for r in native] == [r["case_id"] for r in coarse]
    # Training grid: 16 x 16 voxels of 2 x the in-plane spacing; native: 32 x 32.
    case = slices.cases[0]
    vol = load_volume(config.data.mri_dir / "labelsTr" / f"{case}.nii.gz")
    assert slices.spacing[case][0] == pytest.approx(2 * vol.spacing[0])
    # A perfect mask on the training grid: IoU 1 there, after post-processing too.
    perfect = case_metrics(slices, np.asarray(slices.masks), ("iou", "mssd"), PostprocessConfig())
    assert all(r["iou"] == 1.0 and r["mssd"] == 0.0 for r in perfect)


def test_native_grid_needs_every_slice(trained, phantom_root):
    config, work, _ = trained
    model, _ = load_unet(work / "best.pt", torch.device("cpu"))
    case = tdata.cases_in(config.data.mri_dir, config, "test")[0]
    some = tdata.load(config, config.data.mri_dir, "mri", None, cases=[case], empty_slice_fraction=0.0)
    vol = load_volume(config.data.mri_dir / "labelsTr" / f"{case}.nii.gz")
    assert len(some) < vol.shape[2]  # liver-only slices: not every slice
    with pytest.raises(LiverlabError, match=f"case {case}: .*every slice"):
        native_case_metrics(model, some, config.data.mri_dir, torch.device("cpu"))


def _one_hot(masks: np.ndarray) -> np.ndarray:
    m = np.asarray(masks, dtype=np.float32)
    return np.stack([1.0 - m, m], axis=1)


def test_to_native_inverts_the_spacing_crop_exactly():
    from liverlab.data.preprocess import to_spacing
    from liverlab.infer.evaluate import to_native

    # 40 x 40 slice at 1 mm, cached at 1 mm per pixel into 32 x 32: a centre crop of 4 px per side.
    label = np.zeros((1, 40, 40), dtype=np.uint8)
    label[0, 10:30, 12:20] = 1  # inside the kept centre
    label[0, 0:2, 0:2] = 1  # in the cut-off border
    cached = to_spacing(label, (1.0, 1.0), 1.0, 32, label=True)
    assert cached.shape == (1, 32, 32) and cached.sum() == 20 * 8
    back = to_native(_one_hot(cached), (40, 40), (1.0, 1.0), 1.0).argmax(1)
    expected = label.copy()
    expected[0, 0:2, 0:2] = 0  # what the crop cut off comes back as background
    assert np.array_equal(back, expected)


def test_to_native_roundtrip_of_a_phantom_label(phantom_root):
    from liverlab.data.preprocess import axial_slices, resize_slices, to_spacing
    from liverlab.metrics import iou
    from liverlab.infer.evaluate import to_native

    vol = load_volume(phantom_root / "mri" / "labelsTr" / "phantom_000.nii.gz")
    label = axial_slices((vol.image > 0).astype(np.uint8), np.arange(vol.shape[2]))
    sxy = tuple(vol.spacing[:2])
    # Plain resize (spacing_mm None) to 64 x 64 and back; resampling to 0.75x the pixel size, centre-cropped
    # to 32 (the liver stays inside the crop). Both come back on the label's grid and match it.
    plain = to_native(_one_hot(resize_slices(label, 64, label=True)), vol.shape[:2], sxy, None).argmax(1)
    mm = 0.75 * sxy[0]
    cached = to_spacing(label, sxy, mm, 32, label=True)
    spaced = to_native(_one_hot(cached), vol.shape[:2], sxy, mm).argmax(1)
    assert plain.shape == spaced.shape == label.shape
    assert iou(plain, label) == 1.0
    assert iou(spaced, label) > 0.95
    # Undoing only the resize (ignoring the crop) would misplace the liver.
    assert iou(to_native(_one_hot(cached), vol.shape[:2], sxy, None).argmax(1), label) < 0.6


def test_native_grid_reads_the_cache_spacing(phantom_root):
    from liverlab.infer.evaluate import slice_grid_spacing_mm

    plain = _config(phantom_root)
    spaced = _config(phantom_root, **{"data.spacing_mm": 15.0})
    case = tdata.cases_in(plain.data.mri_dir, plain, "test")[0]
    assert slice_grid_spacing_mm(tdata.load(plain, plain.data.mri_dir, "mri", None, all_slices=True, cases=[case])) is None
    assert slice_grid_spacing_mm(tdata.load(spaced, spaced.data.mri_dir, "mri", None, all_slices=True, cases=[case])) == 15.0


def test_a_failed_segmentation_leaves_no_masks(trained, phantom_root, tmp_path):
    import shutil

    from liverlab.data.manifest import read_manifest

    config, work, _ = trained
    model, _ = load_unet(work / "best.pt", torch.device("cpu"))
    cases = tdata.cases_in(config.data.mri_dir, config, "train")[:2]
    slices = tdata.load(config, config.data.mri_dir, "mri", None, all_slices=True, cases=cases)
    # A copy of the dataset whose manifest lacks the second case: the first case is segmented, the second fails.
    data = tmp_path / "mri"
    shutil.copytree(phantom_root / "mri", data)
    manifest = read_manifest(data)
    manifest.filter(manifest["case_id"] != cases[1]).write_parquet(data / "manifest.parquet")
    out = tmp_path / "pred"
    with pytest.raises(LiverlabError, match=f"case {cases[1]}"):
        native_case_metrics(model, slices, data, torch.device("cpu"), out=out)
    assert list(out.iterdir()) == []  # neither the first mask nor the staging folder is left
