"""`liverlab evaluate`: --split auto (no silent subsets), outlier flags, median and worst case."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from liverlab import outliers
from liverlab.cli import main
from liverlab.config import config_from_dict
from liverlab.data.manifest import build_manifest
from liverlab.data.phantoms import generate_phantoms
from liverlab.infer.commands import evaluation_result
from liverlab.train import common
from liverlab.train import data as tdata
from liverlab.train.unet import build_unet


def _config(root: Path):
    return config_from_dict(
        {
            "name": "eval",
            "data": {"root": str(root), "size": 32, "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "unet": {"model": {"depth": 2, "base_features": 4}},
        }
    )


def _checkpoint(path: Path, root: Path, with_patients: bool = True) -> tuple[Path, set[str], set[str]]:
    """A real U-Net (seeded random weights) saved as best.pt, with or without ``train_patients``.

    Returns (path, patients trained/validated on, test patients) under the config's split.
    """
    cfg = _config(root)
    table = tdata.split_table(root / "mri", cfg)
    seen = set(table.filter(table["split"] != "test")["patient_id"].to_list())
    test = set(table.filter(table["split"] == "test")["patient_id"].to_list())
    torch.manual_seed(0)
    state = {"kind": "unet_weights", "model": build_unet(cfg).state_dict(), "config": cfg.model_dump(mode="json")}
    if with_patients:
        state["train_patients"] = sorted(seen)
    path.parent.mkdir(parents=True, exist_ok=True)
    common.atomic_torch_save(state, path)
    return path, seen, test


def _renamed_dataset(src: Path, out: Path, prefix: str, keep: list[str] | None = None) -> Path:
    """A copy of the MRI dataset ``src`` whose cases (and patients) are renamed ``phantom_* -> prefix_*``.

    ``keep`` names cases copied under their own name (patients the checkpoint may have seen).
    """
    from liverlab.data.layout import write_dataset_json

    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    names = {}
    for img in sorted((src / "imagesTr").glob("*_0000.nii.gz")):
        case = img.name[: -len("_0000.nii.gz")]
        new = case if keep and case in keep else case.replace("phantom", prefix)
        shutil.copy(img, out / "imagesTr" / f"{new}_0000.nii.gz")
        shutil.copy(src / "labelsTr" / f"{case}.nii.gz", out / "labelsTr" / f"{new}.nii.gz")
        names[new] = new
    write_dataset_json(out, "mri", names)
    build_manifest(out)
    return out


@pytest.fixture(scope="module")
def other_root(tmp_path_factory) -> Path:
    """Four phantom patients from another seed, with other patient ids (a dataset the checkpoint never saw)."""
    tmp = tmp_path_factory.mktemp("other")
    generate_phantoms(tmp / "raw", patients=4, size=32, slices=8, seed=11, progress=False)
    return _renamed_dataset(tmp / "raw" / "mri", tmp / "mri", "newpat")


def _run(capsys, *args: str) -> tuple[dict, str]:
    assert main(["evaluate", *args, "--json"]) == 0
    cap = capsys.readouterr()
    return json.loads(cap.out), cap.err


def test_unseen_dataset_is_scored_whole_by_default(phantom_root, other_root, tmp_path, capsys):
    ckpt, _, _ = _checkpoint(tmp_path / "run" / "best.pt", phantom_root)
    result, err = _run(capsys, "--checkpoint", str(ckpt), "--data", str(other_root), "--out", str(tmp_path / "p"))
    assert result["split"] == "all" and result["split_requested"] == "auto"
    assert result["n_cases"] == 4 and result["n_patients"] == 4 and len(result["cases"]) == 4
    assert "scored split all (auto): 4 case(s), 4 patient(s)" in err
    assert "none of the dataset's patients were in the checkpoint's training data" in err
    assert sorted(p.name for p in (tmp_path / "p").glob("*.nii.gz")) == [f"newpat_{k:03d}.nii.gz" for k in range(4)]


def test_trained_checkpoint_all_on_a_new_dataset_test_on_its_own(phantom_root, other_root, tmp_path, capsys):
    from conftest import TINY

    run = tmp_path / "trained"
    assert main(["train", str(TINY), "--set", f"data.root={phantom_root}", "--set", "data.phantom=null",
                 "--set", "unet.iterations=2", "--set", "unet.val_every=2", "--out", str(run), "--no-track"]) == 0
    capsys.readouterr()
    state = common.load_checkpoint(run / "best.pt")
    assert len(state["train_patients"]) == 5 and state["manifest_hash"]  # 4 train + 1 val of 6
    result, err = _run(
        capsys, "--checkpoint", str(run / "best.pt"), "--data", str(other_root), "--out", str(tmp_path / "a")
    )
    assert (result["split"], result["n_cases"], result["n_patients"]) == ("all", 4, 4)
    assert "the checkpoint's train_patients" in err
    result, err = _run(capsys, "--checkpoint", str(run / "best.pt"), "--data", str(phantom_root / "mri"),
                       "--out", str(tmp_path / "b"))
    assert (result["split"], result["n_cases"]) == ("test", 1)
    assert result["manifest_match"] is True and "same manifest hash" in err


def test_own_dataset_scores_only_its_test_patients(phantom_root, tmp_path, capsys):
    ckpt, seen, test = _checkpoint(tmp_path / "run" / "best.pt", phantom_root)
    result, err = _run(
        capsys, "--checkpoint", str(ckpt), "--data", str(phantom_root / "mri"), "--out", str(tmp_path / "p")
    )
    assert result["split"] == "test" and result["n_cases"] == len(test) == 1
    assert {c["patient_id"] for c in result["cases"]} == test and not test & seen
    assert "scored split test (auto): 1 case(s), 1 patient(s)" in err
    # An explicit split is obeyed, with a warning when it scores patients the checkpoint saw.
    result, err = _run(capsys, "--checkpoint", str(ckpt), "--data", str(phantom_root / "mri"), "--split", "all",
                       "--out", str(tmp_path / "p"))
    assert result["split"] == "all" and result["n_cases"] == 6
    assert f"warning: {len(seen)} scored patient(s) were in the checkpoint's training data" in err


def test_partly_shared_dataset_scores_the_unseen_patients(phantom_root, tmp_path, capsys):
    ckpt, seen, _ = _checkpoint(tmp_path / "run" / "best.pt", phantom_root)
    two_seen = sorted(seen)[:2]
    mixed = _renamed_dataset(phantom_root / "mri", tmp_path / "mixed", "other", keep=two_seen)
    result, err = _run(capsys, "--checkpoint", str(ckpt), "--data", str(mixed), "--out", str(tmp_path / "p"))
    assert result["split"] == "unseen" and result["n_cases"] == 4
    assert not {c["patient_id"] for c in result["cases"]} & set(two_seen)
    assert "2 of the dataset's 6 patients were in the checkpoint's training data" in err


def test_old_checkpoint_recomputes_its_patients_from_its_config(phantom_root, other_root, tmp_path, capsys):
    ckpt, _, test = _checkpoint(tmp_path / "old" / "best.pt", phantom_root, with_patients=False)
    result, err = _run(
        capsys, "--checkpoint", str(ckpt), "--data", str(phantom_root / "mri"), "--out", str(tmp_path / "p")
    )
    assert result["split"] == "test" and {c["patient_id"] for c in result["cases"]} == test
    assert "older checkpoint without train_patients" in err
    result, _ = _run(capsys, "--checkpoint", str(ckpt), "--data", str(other_root), "--out", str(tmp_path / "p"))
    assert result["split"] == "all" and result["n_cases"] == 4


def test_old_checkpoint_without_its_data_falls_back_to_test_and_says_so(phantom_root, tmp_path, capsys):
    copy = tmp_path / "gone"
    shutil.copytree(phantom_root / "mri", copy / "mri")
    ckpt, _, test = _checkpoint(tmp_path / "old" / "best.pt", copy, with_patients=False)
    shutil.rmtree(copy)  # the checkpoint's training data is no longer here
    result, err = _run(
        capsys, "--checkpoint", str(ckpt), "--data", str(phantom_root / "mri"), "--out", str(tmp_path / "p")
    )
    assert result["split"] == "test" and result["n_cases"] == 1
    assert "pass --split all if this dataset is new to the model" in err


def test_fully_seen_dataset_is_an_error_naming_the_way_out(phantom_root, tmp_path, capsys):
    ckpt, seen, _ = _checkpoint(tmp_path / "run" / "best.pt", phantom_root)
    only_seen = tmp_path / "seen"
    _renamed_dataset(phantom_root / "mri", only_seen, "x", keep=sorted(seen))
    for f in (only_seen / "imagesTr").glob("x_*"):
        f.unlink()
    for f in (only_seen / "labelsTr").glob("x_*"):
        f.unlink()
    from liverlab.data.layout import write_dataset_json

    write_dataset_json(only_seen, "mri", {p: p for p in seen})
    (only_seen / "manifest.parquet").unlink()
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(only_seen), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "pass --split all" in err and str(only_seen) in err


# ----------------------------------------------------------------------------- outliers, median, worst


ROWS = [  # literal metric rows: one total failure (the RAVD 99.5 %), one volume outlier, two fine
    {"case_id": "a", "patient_id": "a", "iou": 0.00, "dice": 0.00, "ravd": 99.5, "assd": 40.0, "mssd": 90.0},
    {"case_id": "b", "patient_id": "b", "iou": 0.60, "dice": 0.75, "ravd": 60.0, "assd": 3.0, "mssd": 20.0},
    {"case_id": "c", "patient_id": "c", "iou": 0.80, "dice": 8 / 9, "ravd": 5.0, "assd": 1.0, "mssd": 8.0},
    {"case_id": "d", "patient_id": "d", "iou": 0.90, "dice": 18 / 19, "ravd": 2.0, "assd": 0.5, "mssd": 4.0},
]


def test_outlier_rules_known_answers():
    assert outliers.DICE_MIN == 0.5 and outliers.RAVD_MAX_PCT == 50.0
    assert outliers.flag(ROWS[0]) == "Dice 0.00 < 0.5; |RAVD| 99.5 % > 50 %"
    assert outliers.flag(ROWS[1]) == "|RAVD| 60.0 % > 50 %"
    assert outliers.flag(ROWS[2]) == "" and outliers.flag(ROWS[3]) == ""
    assert outliers.flag({"dice": 0.5, "ravd": 50.0}) == ""  # the thresholds themselves are not outliers
    assert outliers.flag({"dice": 0.499, "ravd": -50.1}) == "Dice 0.50 < 0.5; |RAVD| 50.1 % > 50 %"
    assert outliers.flag({"dice": 0.9, "ravd": math.inf}) == "|RAVD| inf % > 50 %"


def test_mean_median_worst_known_answers():
    r = evaluation_result(
        ROWS, {"split": "all", "split_requested": "auto", "split_notes": [], "n_cases": 4, "n_patients": 4}
    )
    assert r["outliers"] == ["a", "b"] and r["n_outliers"] == 2
    assert [c["flag"] != "" for c in r["cases"]] == [True, True, False, False]
    assert r["mean"]["iou"] == pytest.approx(0.575) and r["median"]["iou"] == pytest.approx(0.70)
    assert r["worst"]["iou"] == 0.0 and r["worst"]["dice"] == 0.0
    assert r["worst"]["ravd"] == 99.5 and r["worst"]["assd"] == 40.0 and r["worst"]["mssd"] == 90.0
    assert r["median"]["mssd"] == pytest.approx(14.0)
    # An infinite distance is left out of mean and median, counted, and is the worst case.
    inf_rows = [*ROWS[2:], {**ROWS[3], "case_id": "e", "patient_id": "e", "assd": math.inf}]
    r = evaluation_result(
        inf_rows, {"split": "all", "split_requested": "auto", "split_notes": [], "n_cases": 3, "n_patients": 3}
    )
    assert r["mean"]["assd"] == pytest.approx(0.75) and r["n_inf"]["assd"] == 1 and r["worst"]["assd"] == math.inf


def test_cases_of_one_patient_weigh_once():
    rows = [{**ROWS[2], "case_id": "c1"}, {**ROWS[2], "case_id": "c2", "iou": 0.6}, ROWS[3]]
    r = evaluation_result(
        rows, {"split": "all", "split_requested": "auto", "split_notes": [], "n_cases": 3, "n_patients": 2}
    )
    assert r["mean"]["iou"] == pytest.approx((0.7 + 0.9) / 2) and r["worst"]["iou"] == pytest.approx(0.7)


def test_table_marks_outliers_and_prints_median_and_worst(phantom_root, tmp_path, capsys):
    label = phantom_root / "mri" / "labelsTr" / "phantom_001.nii.gz"
    from liverlab.data.nifti import load_volume, save_volume

    vol = load_volume(label)
    empty = tmp_path / "pred"
    empty.mkdir()
    save_volume(empty / "phantom_001.nii.gz", (vol.image * 0).astype("uint8"), vol.affine)  # finds no liver
    assert main(["evaluate", "--pred", str(empty / "phantom_001.nii.gz"), "--label", str(label)]) == 0
    out = capsys.readouterr().out
    assert "! phantom_001" in out and "Dice 0.00 < 0.5; |RAVD| 100.0 % > 50 %" in out
    assert "median" in out and "worst" in out
    assert "warning: 1 of 1 case(s) are outliers (Dice < 0.5 or |RAVD| > 50 %): phantom_001" in out
    assert main(["evaluate", "--pred", str(label), "--label", str(label), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["n_outliers"] == 0 and same["cases"][0]["flag"] == "" and same["median"]["iou"] == 1.0


def _half_liver(ckpt: Path, root: Path) -> None:
    """Shift the random U-Net's last bias so it calls about half of the test pixels liver (not an empty mask)."""
    from liverlab.infer.segment import load_unet

    model, cfg = load_unet(ckpt, torch.device("cpu"))
    slices = tdata.load(cfg, root / "mri", "mri", "test", all_slices=True)
    with torch.no_grad():
        logits = model(torch.from_numpy(np.array(slices.images, dtype=np.float32))[:, None])
    state = common.load_checkpoint(ckpt)
    last_bias = [k for k, v in state["model"].items() if k.endswith("bias") and v.shape == (2,)][-1]
    state["model"][last_bias][1] -= float((logits[:, 1] - logits[:, 0]).median())
    common.atomic_torch_save(state, ckpt)


def test_tta_option_and_the_checkpoint_setting_agree(phantom_root, tmp_path, capsys):
    ckpt, _, _ = _checkpoint(tmp_path / "run" / "best.pt", phantom_root)
    _half_liver(ckpt, phantom_root)
    data = str(phantom_root / "mri")
    plain, _ = _run(capsys, "--checkpoint", str(ckpt), "--data", data, "--out", str(tmp_path / "a"))
    off, _ = _run(capsys, "--checkpoint", str(ckpt), "--data", data, "--out", str(tmp_path / "b"), "--tta", "off")
    tta, _ = _run(capsys, "--checkpoint", str(ckpt), "--data", data, "--out", str(tmp_path / "c"), "--tta", "15,0.2")
    assert off["cases"] == plain["cases"]
    assert tta["n_cases"] == plain["n_cases"] == 1
    # The same ensemble from the checkpoint's own unet.tta gives the same numbers as the command-line override.
    state = common.load_checkpoint(ckpt)
    state["config"]["unet"]["tta"] = {"rotate_degrees": 15.0, "scale": 0.2}
    common.atomic_torch_save(state, tmp_path / "tta" / "best.pt")
    own, _ = _run(capsys, "--checkpoint", str(tmp_path / "tta" / "best.pt"), "--data", data,
                  "--out", str(tmp_path / "d"))
    assert own["cases"] == tta["cases"]
    assert own["cases"] != plain["cases"]  # the ensemble changed the prediction of this (random) U-Net
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", data, "--out", str(tmp_path / "e"), "--tta", "ten"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--tta 'ten'" in err
