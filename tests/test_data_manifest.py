"""Manifest: contents, reuse, patient-level splits, hash, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from data_helpers import tiny_phantoms

from liverlab.data import manifest as mf
from liverlab.errors import LiverlabError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_phantoms(tmp_path_factory.mktemp("mf") / "tiny")


def test_manifest_columns_and_values(tiny: Path) -> None:
    df = mf.read_manifest(tiny / "ct")
    assert df.height == 3
    row = df.row(0, named=True)
    assert row["case_id"] == row["patient_id"] == "phantom_000"
    assert row["modality"] == "ct"
    assert (
        row["image_path"] == "imagesTr/phantom_000_0000.nii.gz" and row["label_path"] == "labelsTr/phantom_000.nii.gz"
    )
    assert row["shape"] == [32, 32, 8] and row["spacing"] == pytest.approx([10.0, 10.0, 5.0])
    assert row["liver_voxels"] > 0 and len(row["image_sha256"]) == 64 and len(row["label_sha256"]) == 64
    from liverlab.data.atomic import sha256_file

    assert row["image_sha256"] == sha256_file(tiny / "ct" / row["image_path"])


def test_rebuild_reuses_unchanged_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tiny_phantoms(tmp_path / "p", patients=2, size=16, slices=4)
    calls: list[str] = []
    real = mf.sha256_file
    monkeypatch.setattr(mf, "sha256_file", lambda p: calls.append(str(p)) or real(p))
    df1 = mf.build_manifest(root / "mri")
    assert calls == []  # nothing changed: nothing re-hashed
    img = root / "mri" / df1["image_path"][1]
    img.write_bytes(img.read_bytes())  # same bytes, new mtime
    import os

    os.utime(img, ns=(1, 1))
    df2 = mf.build_manifest(root / "mri")
    assert calls == [str(img), str(root / "mri" / df1["label_path"][1])]
    assert df2["image_sha256"].to_list() == df1["image_sha256"].to_list()


def _fake_manifest(patient_cases: dict[str, int]) -> pl.DataFrame:
    rows = []
    for p, n in patient_cases.items():
        for k in range(n):
            rows.append(
                {
                    "case_id": f"{p}_c{k}",
                    "patient_id": p,
                    "modality": "mri",
                    "image_sha256": "x",
                    "label_sha256": "y",
                    "split": None,
                }
            )
    return pl.DataFrame(rows, schema_overrides={"split": pl.String})


@pytest.mark.parametrize("n_patients", [1, 2, 3, 5, 11])
def test_no_patient_in_two_splits(n_patients: int) -> None:
    rng = np.random.default_rng(n_patients)
    df = _fake_manifest({f"p{i:02d}": int(rng.integers(1, 4)) for i in range(n_patients)})
    for seed in range(60):
        out = mf.assign_splits(df, 0.2, 0.2, seed)
        per_patient = out.group_by("patient_id").agg(pl.col("split").n_unique().alias("n"))
        assert per_patient["n"].max() == 1
        counts = out.group_by("split").agg(pl.col("patient_id").n_unique().alias("n"))
        got = dict(zip(counts["split"].to_list(), counts["n"].to_list()))
        assert got.get("train", 0) >= 1
        if n_patients >= 3:
            assert got.get("val", 0) >= 1 and got.get("test", 0) >= 1


def test_splits_deterministic_and_seed_dependent() -> None:
    df = _fake_manifest({f"p{i}": 2 for i in range(10)})
    a = mf.assign_splits(df, 0.2, 0.2, 3)["split"].to_list()
    assert a == mf.assign_splits(df, 0.2, 0.2, 3)["split"].to_list()
    assert any(mf.assign_splits(df, 0.2, 0.2, s)["split"].to_list() != a for s in range(4, 10))
    # Row order does not matter: assignment is per sorted patient id.
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=1)
    b = dict(zip(mf.assign_splits(shuffled, 0.2, 0.2, 3)["case_id"], mf.assign_splits(shuffled, 0.2, 0.2, 3)["split"]))
    assert b == dict(zip(df["case_id"], a))


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [
        (10, 0.2, 0.2, (6, 2, 2)),
        (3, 0.2, 0.2, (1, 1, 1)),
        (2, 0.2, 0.2, (2, 0, 0)),
        (5, 0.0, 0.2, (4, 0, 1)),
        (1, 0.4, 0.4, (1, 0, 0)),
    ],
)
def test_split_counts(n: int, val: float, test: float, expected: tuple[int, int, int]) -> None:
    assert mf.split_counts(n, val, test) == expected


def test_manifest_hash(tiny: Path) -> None:
    df = mf.read_manifest(tiny / "ct")
    h = mf.manifest_hash(df)
    assert h == mf.manifest_hash(df.reverse())  # order-independent
    assert h != mf.manifest_hash(mf.assign_splits(df, 0.3, 0.3, 0))
    assert h != mf.manifest_hash(df.with_columns(pl.lit("0" * 64).alias("image_sha256")))


def test_cli_split_and_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from liverlab.cli import main

    root = tiny_phantoms(tmp_path / "p", patients=5, size=16, slices=4)
    assert main(["data", "split", str(root / "ct"), "--val", "0.2", "--test", "0.2", "--seed", "4"]) == 0
    df = mf.read_manifest(root / "ct")
    assert df["split"].null_count() == 0
    assert df["split"].to_list() == mf.assign_splits(df, 0.2, 0.2, 4)["split"].to_list()
    assert "train: 3 patients" in capsys.readouterr().out
    # A rebuild keeps the split.
    assert main(["data", "manifest", str(root / "ct")]) == 0
    assert mf.read_manifest(root / "ct")["split"].to_list() == df["split"].to_list()
    assert main(["data", "split", str(root / "ct"), "--val", "0.6", "--test", "0.5"]) == 2
    assert "val + test" in capsys.readouterr().err


def test_read_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(LiverlabError, match="no manifest"):
        mf.read_manifest(tmp_path)


def test_patients_from_dataset_json(tmp_path: Path) -> None:
    """Several cases of one patient (liverlab_patients in dataset.json) stay in one split."""
    root = tiny_phantoms(tmp_path / "p", patients=4, size=16, slices=4)
    meta = json.loads((root / "ct" / "dataset.json").read_text())
    meta["liverlab_patients"] = {"phantom_000": "A", "phantom_001": "A", "phantom_002": "B", "phantom_003": "C"}
    (root / "ct" / "dataset.json").write_text(json.dumps(meta))
    df = mf.build_manifest(root / "ct")
    assert df["patient_id"].to_list() == ["A", "A", "B", "C"]
    for seed in range(20):
        s = mf.assign_splits(df, 0.3, 0.3, seed)["split"].to_list()
        assert s[0] == s[1]


# ----------------------------------------------------------------------------- k-fold over patients


def test_kfold_known_partition_each_patient_tested_once() -> None:
    # default_rng(0).permutation(5) = [2, 4, 3, 0, 1]: folds of one patient each, in that order.
    ids = ["1", "2", "3", "5", "8"]
    tested = [
        [p for p, s in mf.patient_splits(ids, 0.0, 0.2, 0, folds=5, fold=k).items() if s == "test"] for k in range(5)
    ]
    assert tested == [["3"], ["8"], ["5"], ["1"], ["2"]]
    assert all(s in ("train", "test") for s in mf.patient_splits(ids, 0.0, 0.2, 0, folds=5, fold=0).values())


@pytest.mark.parametrize(("n", "folds", "val"), [(5, 5, 0.0), (7, 3, 0.25), (11, 4, 0.2), (6, 2, 0.5)])
def test_kfold_every_patient_tested_exactly_once(n: int, folds: int, val: float) -> None:
    ids = [f"p{i:02d}" for i in range(n)]
    for seed in range(5):
        tests: list[str] = []
        for k in range(folds):
            out = mf.patient_splits(ids, val, 0.2, seed, folds=folds, fold=k)
            assert sorted(out) == ids  # every patient in exactly one split of this fold
            test = [p for p, s in out.items() if s == "test"]
            assert len(test) in (n // folds, -(-n // folds))  # near-equal folds
            assert "train" in out.values()
            assert ("val" in out.values()) == (val > 0)
            tests += test
            assert out == mf.patient_splits(list(reversed(ids)), val, 0.2, seed, folds=folds, fold=k)  # same seed, same
        assert sorted(tests) == ids


def test_kfold_validation_share_of_the_rest() -> None:
    # 7 patients, 3 folds: fold 0 tests 3 (p2, p4, p3), val 0.25 of the other 4 = 1 patient.
    out = mf.patient_splits([f"p{i}" for i in range(7)], 0.25, 0.2, 0, folds=3, fold=0)
    assert out == {"p2": "test", "p4": "test", "p3": "test", "p6": "val", "p5": "train", "p0": "train", "p1": "train"}


def test_kfold_errors_name_the_key() -> None:
    with pytest.raises(LiverlabError, match="data.split.folds = 6"):
        mf.patient_splits(["a", "b", "c", "d", "e"], 0.0, 0.2, 0, folds=6, fold=0)
    with pytest.raises(LiverlabError, match="data.split.fold = 3"):
        mf.patient_splits(["a", "b", "c"], 0.0, 0.2, 0, folds=3, fold=3)
    from liverlab.config import config_from_dict

    with pytest.raises(LiverlabError, match=r"data\.split.*fold must be < data\.split\.folds"):
        config_from_dict({"data": {"root": ".", "split": {"folds": 5, "fold": 5}}}, source="x.yaml")


def test_kfold_assign_splits_by_patient() -> None:
    df = _fake_manifest({f"p{i}": 2 for i in range(6)})
    out = mf.assign_splits(df, 0.0, 0.2, 1, folds=3, fold=2)
    per_patient = out.group_by("patient_id").agg(pl.col("split").n_unique().alias("n"))
    assert per_patient["n"].max() == 1
    assert out.filter(pl.col("split") == "test")["patient_id"].n_unique() == 2
