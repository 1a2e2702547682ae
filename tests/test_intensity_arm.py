"""``synthesis: intensity``: the non-GAN control arm (CT remapped to the real-MRI histogram)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import ReportLog, tiny_config

from liverlab.config import config_from_dict
from liverlab.data.nifti import load_volume
from liverlab.train import data as tdata
from liverlab.train.intensity_synth import mid_ranks, random_warp, remap_slice, slice_rng
from liverlab.train.pipeline import cached_intensity

# A literal CT slice (HU): air, fat, spleen, liver.
AIR, FAT, SPLEEN, LIVER = -1000.0, -100.0, 45.0, 60.0
SLICE = np.array([[AIR, FAT], [SPLEEN, LIVER]])
REFERENCE = np.linspace(0.0, 1000.0, 1001)  # a strictly increasing MRI quantile function


def _config(root: Path, seed: int = 0):
    return config_from_dict({"name": "arm", "seed": seed, "stage": "pipeline", "synthesis": "intensity",
                             "data": {"root": str(root), "size": 32, "split": {"val": 0.2, "test": 0.2, "seed": 0}}})


def test_plain_matching_known_answer():
    # Window [-160, 240] -> [0, 0.15, 0.5125, 0.55]; mid-ranks of 4 distinct values 1/8, 3/8, 5/8, 7/8.
    out = remap_slice(SLICE, (-160.0, 240.0), REFERENCE, None)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[125.0, 375.0], [625.0, 875.0]], atol=1e-3)
    np.testing.assert_allclose(mid_ranks(np.array([0.0, 0.0, 1.0, 1.0])), [0.25, 0.25, 0.75, 0.75])


def test_random_remap_keeps_tissue_order_and_range():
    for seed in range(20):
        out = remap_slice(SLICE, (-160.0, 240.0), REFERENCE, slice_rng(seed, "phantom_000", 3))
        air, fat, spleen, liver = out.ravel()
        assert air < fat < spleen < liver  # monotone: CT tissue order preserved
        assert 0.0 <= out.min() and out.max() <= 1000.0
    xs, ys = random_warp(np.random.default_rng(1))
    assert ys[0] == 0.0 and ys[-1] == 1.0 and np.all(np.diff(ys) > 0) and np.all(np.diff(xs) > 0)
    # Same seed, case and slice: same contrast; another seed: another contrast.
    a = remap_slice(SLICE, (-160.0, 240.0), REFERENCE, slice_rng(0, "phantom_000", 3))
    b = remap_slice(SLICE, (-160.0, 240.0), REFERENCE, slice_rng(0, "phantom_000", 3))
    c = remap_slice(SLICE, (-160.0, 240.0), REFERENCE, slice_rng(1, "phantom_000", 3))
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_dataset_has_ct_labels_mri_range_and_is_deterministic(phantom_root, tmp_path):
    cfg = _config(phantom_root)
    out, reused = cached_intensity(cfg, tmp_path / "c1")
    assert not reused
    again, reused = cached_intensity(cfg, tmp_path / "c1")
    assert reused and again == out
    same, _ = cached_intensity(cfg, tmp_path / "c2")
    other, _ = cached_intensity(_config(phantom_root, seed=1), tmp_path / "c2")
    ct_cases = tdata.cases_in(phantom_root / "ct", cfg, "train")
    mri_train = tdata.cases_in(phantom_root / "mri", cfg, "train")
    real = np.concatenate([load_volume(phantom_root / "mri" / "imagesTr" / f"{c}_0000.nii.gz").image.ravel()
                           for c in mri_train])
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "MRI"} and dataset["numTraining"] == len(ct_cases) == 4
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["reference_cases"] == mri_train and prov["cases"] == ct_cases
    for case in ct_cases:
        ct = load_volume(phantom_root / "ct" / "imagesTr" / f"{case}_0000.nii.gz",
                         phantom_root / "ct" / "labelsTr" / f"{case}.nii.gz")
        syn = load_volume(out / "imagesTr" / f"{case}_0000.nii.gz", out / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(syn.label, ct.label) and np.allclose(syn.affine, ct.affine)
        assert real.min() - 1e-3 <= syn.image.min() and syn.image.max() <= real.max() + 1e-3
        # Liver brighter than fat in the phantom CT stays brighter (monotone per slice).
        liver = ct.label > 0
        assert syn.image[liver].mean() > syn.image[(ct.image > -150) & (ct.image < -50)].mean()
        twin = load_volume(same / "imagesTr" / f"{case}_0000.nii.gz").image
        assert np.array_equal(syn.image, twin)  # deterministic per seed
        assert not np.allclose(syn.image, load_volume(other / "imagesTr" / f"{case}_0000.nii.gz").image)


def test_search_space_accepts_the_arm(tmp_path):
    from liverlab.sweep.space import load_space

    (tmp_path / "base.yaml").write_text(f"name: b\ndata: {{root: {tmp_path / 'data'}}}\n")
    (tmp_path / "s.yaml").write_text(
        "name: s\nbase: base.yaml\nstage: pipeline\n"
        "arms: {synthesis: [none, essnet, intensity]}\nseeds: [0]\n"
        "params: {unet.mixing_ratio: {type: float, low: 0.5, high: 2.0, when: {synthesis: [essnet, intensity]}}}\n"
    )
    loaded = load_space(tmp_path / "s.yaml")
    assert sorted(a["synthesis"] for a in loaded.arms()) == ["essnet", "intensity", "none"]


def test_tiny_pipeline_with_the_intensity_arm(phantom_root, tmp_path):
    from liverlab.train.pipeline import run_pipeline

    config = tiny_config(phantom_root, stage="pipeline", synthesis="intensity", **{"unet.mixing_ratio": 1.0})
    log = ReportLog()
    metrics = run_pipeline(config, log, None, tmp_path / "trial", cache_root=tmp_path / "cache")
    assert log.metrics and "val/iou" in log.metrics[-1]
    assert 0.0 <= metrics["test/iou"] <= 1.0
    assert not (tmp_path / "cache" / "essnet").exists()  # no translator trained
    assert len(list((tmp_path / "cache" / "synthetic").glob("*/provenance.json"))) == 1
