"""`liverlab train / synthesize / evaluate / show-config / validate` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, TINY
from liverlab.cli import main
from liverlab.data.nifti import load_volume, save_volume


def _train(tmp: Path, root: Path, out: str, *sets: str) -> Path:
    args = ["train", str(TINY), "--set", f"data.root={root}", "--set", "data.phantom=null", "--out", str(tmp / out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return tmp / out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom_root):
    tmp = tmp_path_factory.mktemp("trained")
    essnet = _train(tmp, phantom_root, "essnet", "stage=essnet")
    unet = _train(tmp, phantom_root, "unet", "unet.iterations=12")
    return essnet, unet


def test_train_records_an_mlflow_run(trained, capsys):
    _, unet = trained
    client = MlflowClient(f"sqlite:///{unet}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(client.get_metric_history(runs[0].info.run_id, "val/iou")) == 3
    assert runs[0].data.params["stage"] == "unet"
    assert (unet / "config.yaml").is_file() and (unet / "per_patient.parquet").is_file()


def test_synthesize_writes_nnunet_dataset_and_reuses_it(trained, phantom_root, tmp_path, capsys):
    essnet, _ = trained
    out = tmp_path / "synthetic"
    args = ["synthesize", "--checkpoint", str(essnet / "checkpoint"), "--data", str(phantom_root / "ct"), "--out", str(out)]
    assert main(args) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "MRI"} and dataset["numTraining"] == 6
    assert (out / "manifest.parquet").is_file()
    prov = json.loads((out / "provenance.json").read_text())
    stamp = (out / "provenance.json").stat().st_mtime_ns
    assert main(args) == 0  # same checkpoint and data: reused, not rewritten
    assert (out / "provenance.json").stat().st_mtime_ns == stamp
    ct = load_volume(phantom_root / "ct" / "imagesTr" / "phantom_000_0000.nii.gz", phantom_root / "ct" / "labelsTr" / "phantom_000.nii.gz")
    syn = load_volume(out / "imagesTr" / "phantom_000_0000.nii.gz", out / "labelsTr" / "phantom_000.nii.gz")
    assert np.array_equal(ct.label, syn.label) and np.allclose(ct.affine, syn.affine)
    assert prov["source_manifest_hash"] and "essnet" in prov["config"]


def test_synthesize_refuses_to_overwrite_a_foreign_folder(trained, phantom_root, tmp_path, capsys):
    essnet, _ = trained
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    rc = main(["synthesize", "--checkpoint", str(essnet / "checkpoint"), "--data", str(phantom_root / "ct"),
               "--out", str(tmp_path / "busy")])
    assert rc == 2 and "not a liverlab synthetic dataset" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_evaluate_files_known_answer(phantom_root, tmp_path, capsys):
    label = phantom_root / "mri" / "labelsTr" / "phantom_001.nii.gz"
    vol = load_volume(label)
    # Prediction = label shifted by one voxel along z: IoU < 1, and MSSD is one slice step.
    shifted = np.zeros_like(vol.image)
    shifted[:, :, 1:] = vol.image[:, :, :-1]
    save_volume(tmp_path / "pred.nii.gz", shifted.astype(np.uint8), vol.affine)
    assert main(["evaluate", "--pred", str(label), "--label", str(label), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["mean"]["iou"] == 1.0 and same["mean"]["assd"] == 0.0
    assert main(["evaluate", "--pred", str(tmp_path / "pred.nii.gz"), "--label", str(label), "--json"]) == 0
    moved = json.loads(capsys.readouterr().out)
    assert 0 < moved["mean"]["iou"] < 1
    assert moved["mean"]["mssd"] == pytest.approx(vol.spacing[2], rel=1e-3)


def test_evaluate_folders_names_missing_cases(phantom_root, tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--label", str(phantom_root / "mri" / "labelsTr")])
    assert rc == 2 and "no prediction for case(s) phantom_000" in capsys.readouterr().err


def test_evaluate_checkpoint_segments_the_test_split(trained, phantom_root, tmp_path, capsys):
    _, unet = trained
    out = tmp_path / "pred"
    assert main(["evaluate", "--checkpoint", str(unet / "best.pt"), "--data", str(phantom_root / "mri"),
                 "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["cases"]) == 1  # the one test patient of the tiny split
    case = result["cases"][0]["case_id"]
    pred = load_volume(out / f"{case}.nii.gz")
    image = load_volume(phantom_root / "mri" / "imagesTr" / f"{case}_0000.nii.gz")
    assert pred.image.shape == image.image.shape and np.allclose(pred.affine, image.affine)


def test_show_config_and_validate(capsys):
    assert main(["show-config", str(TINY), "--set", "unet.iterations=7"]) == 0
    assert "iterations: 7" in capsys.readouterr().out
    assert main(["validate", str(REPO / "experiments"), str(REPO / "search_spaces")]) == 0
    assert "0 invalid" in capsys.readouterr().out


def test_bad_override_is_one_line_exit_2(capsys):
    assert main(["show-config", str(TINY), "--set", "unet.iterations=-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unet.iterations" in err and str(TINY) in err


def test_one_stage_table_for_every_configurable_stage_imports_nothing_heavy() -> None:
    """`liverlab train` and the sweep trainable choose a stage from one table; choosing loads no torch."""
    import subprocess
    import sys
    import typing

    from liverlab.config import ExperimentConfig
    from liverlab.train.stages import STAGES

    assert set(STAGES) == set(typing.get_args(ExperimentConfig.model_fields["stage"].annotation))
    code = ("import sys, liverlab.train.stages, liverlab.train.commands, liverlab.infer.commands;"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
