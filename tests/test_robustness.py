"""Robustness of the U-Net recipe to scanner / patient intensity differences (issue 12).

A tiny U-Net is trained with the shipped augmentation defaults (``AugmentConfig()``:
gamma, contrast, brightness, bias field, noise, blur) on four shared CHAOS
T2-SPIR patients, through the real path: ``import_nifti`` into an nnU-Net
folder, ``train_unet``, and the native-grid test metrics ``liverlab evaluate``
uses. The fifth patient is held out and scored as it is and with its raw
intensities perturbed *before* the normal percentile preprocessing: gamma 0.6
and 1.6 (``M * (x / M) ** g``) and a smooth multiplicative bias field. The
IoU must not drop by more than ``MAX_DROP``.

Calibration (this setup, 600 steps, held-out patient 8, IoU clean / gamma 0.6 /
gamma 1.6 / bias): with the default augmentation 0.736 / 0.621 / 0.621 / 0.725
(drops 0.115, 0.116, 0.012); the same run with every intensity op off
(``p: 0``) 0.709 / 0.458 / 0.003 / 0.256 (drops 0.25, 0.71, 0.45), so a
model trained without the augmentation fails all three. nnU-Net's gamma
(p 0.3, [0.7, 1.5]) at 200 steps: drops 0.28 / 0.40 / 0.00. The 0.1 drop of
issue 12 is not reached by this tiny model (depth 3, 8 features, 64 x 64);
``MAX_DROP`` = 0.15 leaves ~0.03 of margin. The recipe's own models
(``experiments/chaos_unet.yaml`` with ``unet.organs``, 6-fold CV, two seeds)
meet 0.10 on every patient under the same perturbations: worst drop 0.075
over 24 (model, patient) pairs, measured by ``benchmarks/bench_robustness.py``
(docs/chaos.md; the recipe with elastic deformation but without the organs
dropped up to 0.211). Runs in ~45 s of CPU on one thread (marked slow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from liverlab.config import config_from_dict
from liverlab.data.perturb import PERTURBATIONS, check_perturbation, perturb

HELD_OUT = "8"
TRAIN = ("1", "2", "3", "5")
ITERATIONS = 600
MAX_DROP = 0.15

pytestmark = pytest.mark.slow


def _link(src: Path, folder: Path, ids: tuple[str, ...]) -> None:
    folder.mkdir(parents=True)
    for i in ids:
        for kind in ("image", "label"):
            (folder / f"{kind}_{i}.nii.gz").symlink_to(src / f"{kind}_{i}.nii.gz")


@pytest.fixture(scope="module")
def scores(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Held-out IoU per perturbation ("clean" included) of a U-Net trained with the default augmentation."""
    import nibabel as nib

    from liverlab.data.cache import load_slices
    from liverlab.data.importers import import_nifti
    from liverlab.infer import evaluate as ev
    from liverlab.train.unet import build_unet, train_unet

    src = shared_data / "chaos-mr-t2spir"
    if not all((src / f"image_{i}.nii.gz").is_file() for i in (*TRAIN, HELD_OUT)):
        pytest.skip(f"CHAOS MR patients {TRAIN} + {HELD_OUT} not found in {src}")
    tmp = tmp_path_factory.mktemp("robust")
    _link(src, tmp / "src_train", TRAIN)
    train_src = tmp / "src_train"
    train_dir = import_nifti(str(train_src / "image_*"), str(train_src / "label_*"), "mri", 1, tmp / "train", False)
    image = nib.load(src / f"image_{HELD_OUT}.nii.gz")
    raw = np.asarray(image.dataobj, dtype=np.float32)
    eval_dirs = {}
    for name in ("clean", *PERTURBATIONS):
        folder = tmp / f"src_{name}"
        folder.mkdir()
        nib.save(nib.Nifti1Image(perturb(name, raw), image.affine), folder / f"image_{HELD_OUT}.nii.gz")
        (folder / f"label_{HELD_OUT}.nii.gz").symlink_to(src / f"label_{HELD_OUT}.nii.gz")
        eval_dirs[name] = import_nifti(str(folder / "image_*"), str(folder / "label_*"), "mri", 1, tmp / name, False)

    raw_cfg: dict[str, Any] = {
        "stage": "unet",
        "seed": 0,
        "device": "cpu",
        "data": {"mri": str(train_dir), "size": 64, "split": {"val": 0.0, "test": 0.0}},
        "unet": {
            "model": {"depth": 3, "base_features": 8},
            "iterations": ITERATIONS,
            "val_every": ITERATIONS,
            "batch_size": 8,
        },  # augment: the shipped defaults
    }
    config = config_from_dict(raw_cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is as fast and does not spin on a shared machine
    try:
        train_unet(config, workdir=tmp / "run")
        model = build_unet(config)
        model.load_state_dict(torch.load(tmp / "run" / "best.pt", weights_only=True)["model"])
        out = {}
        for name, folder in eval_dirs.items():
            slices = load_slices(folder, "mri", size=64, empty_slice_fraction=1.0)
            rows = ev.native_case_metrics(model, slices, folder, torch.device("cpu"))
            out[name] = float(rows[0]["iou"])
    finally:
        torch.set_num_threads(threads)
    print(f"held-out IoU with the default augmentation: {out}")  # shown by pytest -rP
    return out


def test_perturbations_change_the_preprocessed_input() -> None:
    raw = np.linspace(0.0, 800.0, 4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    np.testing.assert_array_equal(perturb("clean", raw), raw)
    g = perturb("gamma0.6", raw)
    assert g.max() == pytest.approx(800.0) and g[0, 0, 0] == 0.0 and g[1, 0, 0] > raw[1, 0, 0]  # brightens mid-tones
    assert perturb("gamma1.6", raw)[1, 0, 0] < raw[1, 0, 0]
    ratio = perturb("bias", raw)[1:] / raw[1:]
    assert 0.6 < ratio.min() < ratio.max() < 1.36
    np.testing.assert_allclose(perturb("gamma2", np.array([0.0, 2.0, 4.0], np.float32)), [0.0, 1.0, 4.0])  # 4 (2/4)^2


@pytest.mark.parametrize("name", ["gamma", "gamma0", "gamma-1", "gammax", "gammainf", "gammanan", "blur", ""])
def test_unknown_perturbation_is_named(name: str) -> None:
    with pytest.raises(ValueError, match="unknown perturbation"):
        check_perturbation(name)


def test_clean_held_out_patient_is_segmented(scores: dict[str, float]) -> None:
    assert scores["clean"] > 0.5, scores


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_intensity_perturbation_costs_little(scores: dict[str, float], name: str) -> None:
    assert scores["clean"] - scores[name] <= MAX_DROP, scores
