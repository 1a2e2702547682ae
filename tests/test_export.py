"""`liverlab export nnunet`: an nnU-Net v2 raw dataset checked against every rule nnU-Net states.

nnunetv2 does not install here without replacing the CPU build of torch (its
requirements pull torch 2.14 + CUDA), so the rules of its dataset format
(documentation/dataset_format.md) and of its own checker
(nnunetv2/experiment_planning/verify_dataset_integrity.py) are checked one by
one in ``check_nnunet_raw_dataset``; where nnunetv2 is importable, its
checker runs as well.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from liverlab.cli import main
from liverlab.data.importers import import_nifti
from liverlab.data.layout import patients_of
from liverlab.data.nifti import load_volume
from liverlab.errors import LiverlabError
from liverlab.export.nnunet import export_nnunet, make_splits


def check_nnunet_raw_dataset(folder: Path) -> dict[str, list[str]]:
    """Assert nnU-Net v2's raw-dataset rules on ``folder``; return case -> image files."""
    # Dataset folder name: DatasetXXX_Name, three-digit id.
    assert re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_\-]+", folder.name), folder.name
    meta = json.loads((folder / "dataset.json").read_text())
    # Required keys (verify_dataset_integrity: labels, channel_names, numTraining, file_ending).
    assert {"labels", "channel_names", "numTraining", "file_ending"} <= set(meta)
    ending = meta["file_ending"]
    assert ending == ".nii.gz"
    # channel_names: keys "0".."C-1" -> names; one image file per channel per case.
    channels = meta["channel_names"]
    assert sorted(channels) == [str(i) for i in range(len(channels))]
    # labels: name -> int, background 0, consecutive (0, 1, 2, ...).
    values = sorted(meta["labels"].values())
    assert meta["labels"]["background"] == 0 and values == list(range(len(values)))
    # imagesTr/{CASE}_{XXXX}{ending}: XXXX a four-digit channel id; cases from the image files.
    cases: dict[str, list[str]] = {}
    for f in sorted((folder / "imagesTr").iterdir()):
        m = re.fullmatch(r"(.+)_(\d{4})" + re.escape(ending), f.name)
        assert m, f"{f.name}: not CASE_XXXX{ending}"
        cases.setdefault(m.group(1), []).append(m.group(2))
    assert all(sorted(ch) == [f"{int(k):04d}" for k in sorted(channels, key=int)] for ch in cases.values())
    # numTraining equals the cases found; every case has exactly one label file, and no label is extra.
    assert meta["numTraining"] == len(cases)
    labels = sorted(f.name[: -len(ending)] for f in (folder / "labelsTr").iterdir())
    assert labels == sorted(cases)
    for case in cases:
        img = load_volume(folder / "imagesTr" / f"{case}_0000{ending}")
        lab = load_volume(folder / "labelsTr" / f"{case}{ending}")
        # no NaN; only declared label values; same shape, spacing and affine (origin, direction).
        assert not np.isnan(img.image).any() and not np.isnan(lab.image).any()
        assert set(np.unique(lab.image).astype(int)) <= set(values)
        assert img.shape == lab.shape
        assert np.allclose(img.spacing, lab.spacing) and np.allclose(img.affine, lab.affine)
    return cases


@pytest.fixture(scope="module")
def synthetic(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in synthetic MRI dataset: the phantom CT volumes imported as modality mri, 6 cases."""
    ct = phantom_root / "ct"
    out = tmp_path_factory.mktemp("syn") / "synthetic"
    return import_nifti(
        str(ct / "imagesTr/*_0000.nii.gz"), str(ct / "labelsTr/*.nii.gz"), "mri", 1, out, progress=False
    )


def test_export_real_and_synthetic_is_a_valid_nnunet_dataset(
    phantom_root: Path, synthetic: Path, tmp_path: Path, capsys
) -> None:
    rc = main(["export", "nnunet", "--real", str(phantom_root / "mri"), "--synthetic", str(synthetic),
               "--dataset-id", "7", "--name", "LiverSyn", "--out", str(tmp_path / "raw")])  # fmt: skip
    assert rc == 0 and "splits_final.json" in capsys.readouterr().out
    folder = tmp_path / "raw" / "Dataset007_LiverSyn"
    cases = check_nnunet_raw_dataset(folder)
    real = [f"real_phantom_{i:03d}" for i in range(6)]
    syn = [f"syn_mri_{i:03d}" for i in range(6)]
    assert sorted(cases) == sorted(real + syn)  # prefixes: phantom_000 exists in both, no collision
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"} and meta["labels"] == {"background": 0, "liver": 1}
    assert meta["numTraining"] == 12
    # Files are the sources byte for byte.
    assert (folder / "imagesTr/real_phantom_003_0000.nii.gz").read_bytes() == (
        phantom_root / "mri/imagesTr/phantom_003_0000.nii.gz"
    ).read_bytes()
    # Folds: 5 over the 6 real patients; every real case validated exactly once; synthetic never in val.
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 5
    vals = [case for fold in splits for case in fold["val"]]
    assert sorted(vals) == real
    assert [len(fold["val"]) for fold in splits] == [2, 1, 1, 1, 1]
    for fold in splits:
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == sorted(real + syn)
        assert set(syn) <= set(fold["train"]) and not any(c.startswith("syn_") for c in fold["val"])
    assert not list((tmp_path / "raw").glob(".*"))  # no staging left behind


def test_folds_keep_a_patient_together() -> None:
    from liverlab.export.nnunet import ExportCase

    p = Path("x")
    cases = [ExportCase(f"real_{c}", f"real_{pid}", p, p, False) for c, pid in
             (("a1", "A"), ("a2", "A"), ("b1", "B"), ("c1", "C"))]
    cases += [ExportCase("syn_s", "syn_s", p, p, True)]
    splits = make_splits(cases, folds=5, seed=0)
    assert len(splits) == 3  # one fold per real patient when there are fewer than 5
    assert sorted(map(sorted, (f["val"] for f in splits))) == [["real_a1", "real_a2"], ["real_b1"], ["real_c1"]]
    assert all("syn_s" in f["train"] for f in splits)
    assert make_splits(cases, 5, 0) == splits  # seeded: the same folds every time


def test_export_refuses_to_overwrite_without_force(phantom_root: Path, tmp_path: Path, capsys) -> None:
    real = phantom_root / "mri"
    first = export_nnunet(real, tmp_path, 12, progress=False)
    (first / "marker.txt").write_text("old")
    args = ["export", "nnunet", "--real", str(real), "--dataset-id", "12", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Dataset012_Liver: already exists (use --force" in err
    assert (first / "marker.txt").is_file()
    assert main([*args, "--name", "Other"]) == 2
    assert "dataset id 12 is taken by Dataset012_Liver" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert not (first / "marker.txt").exists()
    check_nnunet_raw_dataset(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset012_Liver"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset_id": 1000}, "--dataset-id must be in 1..999"),
        ({"dataset_id": 3, "name": "has space"}, "--name 'has space'"),
        ({"dataset_id": 3, "synthetic": "CT"}, "holds ct cases but --real holds mri"),
        ({"dataset_id": 3, "folds": 1}, "--folds must be at least 2"),
    ],
)
def test_export_bad_arguments(phantom_root: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    if kwargs.get("synthetic") == "CT":
        kwargs = {**kwargs, "synthetic": phantom_root / "ct"}
    with pytest.raises(LiverlabError, match=re.escape(message)):
        export_nnunet(phantom_root / "mri", tmp_path / "raw", progress=False, **kwargs)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_export_patients_follow_the_dataset(phantom_root: Path, tmp_path: Path) -> None:
    """Split units are the dataset's patients (dataset.json liverlab_patients), prefixed like the cases."""
    folder = export_nnunet(phantom_root / "mri", tmp_path, 5, progress=False)
    splits = json.loads((folder / "splits_final.json").read_text())
    patients = patients_of(phantom_root / "mri")
    for fold in splits:
        val_patients = {patients.get(c[len("real_"):], c[len("real_"):]) for c in fold["val"]}
        train_patients = {patients.get(c[len("real_"):], c[len("real_"):]) for c in fold["train"]}
        assert not val_patients & train_patients


def test_nnunet_own_checker(phantom_root: Path, synthetic: Path, tmp_path: Path) -> None:
    """nnU-Net's verify_dataset_integrity, where nnunetv2 is installed
    (it is not in the dev extra: see the module doc)."""
    vdi = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity", reason="nnunetv2 not installed")
    folder = export_nnunet(phantom_root / "mri", tmp_path, 8, synthetic=synthetic, progress=False)
    vdi.verify_dataset_integrity(str(folder), num_processes=1)
