"""No test patient reaches a translator, the shape judge or a U-Net's training (tiny phantoms).

Every image a pipeline trial reads goes through one of two functions:
``liverlab.train.data.load`` (slice sets: translator, judge, U-Net, synthesis)
or ``liverlab.data.nifti.load_volume`` (whole volumes: the synthetic-set
writer, the intensity arm's MRI reference, the native-grid test evaluation).
The spy below wraps both (the real functions still run), and names the stage
of each call from the call stack: ``judge`` (inside ``ensure_judge``),
``translator`` (``train_essnet``), ``synthesis`` (``synthesize`` /
``synthesize_intensity``), ``unet`` (``train_unet``). A U-Net's or the
judge's load of the ``test`` split, and the native-grid test evaluation, are
evaluation; everything else is training data.

On phantoms CT and MRI share patient ids (one anatomy, two modalities), so a
test patient's CT counts as that patient too: the strictest setting.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_config

from liverlab.data import nifti
from liverlab.data.manifest import read_manifest
from liverlab.errors import LiverlabError
from liverlab.train import data as tdata
from liverlab.train.pipeline import run_pipeline

STAGES = (("ensure_judge", "judge"), ("train_essnet", "translator"),
          ("synthesize_intensity", "synthesis"), ("synthesize", "synthesis"), ("train_unet", "unet"))
EVALUATION = {"native_case_metrics", "_split"}  # the U-Net's val/test sets and the native-grid scoring


def _frames() -> set[str]:
    names, f = set(), sys._getframe(2)
    while f is not None:
        names.add(f.f_code.co_name)
        f = f.f_back
    return names


def _stage(names: set[str]) -> str:
    return next((stage for fn, stage in STAGES if fn in names), "other")


def _patient_of(path: Path) -> str:
    """Patient id of an nnU-Net image / label file: from its dataset's manifest, else its case id.

    (A synthetic set being written has no manifest yet; its case ids are the CT cases', which on
    phantoms are the patient ids.)
    """
    case = path.name.split(".nii")[0].removesuffix("_0000")
    try:
        rows = read_manifest(path.parent.parent).select("case_id", "patient_id").rows()
    except LiverlabError:
        return case
    return dict(rows).get(case, case)


class LoadSpy:
    """Records ``(stage, purpose, split asked for, patient ids read)`` for every image load."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, str | None, set[str]]] = []
        real_load, real_volume = tdata.load, nifti.load_volume

        def load(config: Any, dataset_dir: Path, modality: str, split: str | None, **kw: Any) -> Any:
            out = real_load(config, dataset_dir, modality, split, **kw)
            names = _frames()
            purpose = "eval" if split == "test" or names & EVALUATION else "train"
            self.calls.append((_stage(names), purpose, split, {str(p) for p in out.patient_ids}))
            return out

        def load_volume(image: Any, label: Any = None, *a: Any, **kw: Any) -> Any:
            names = _frames()
            if "load_slices" not in names:  # a slice-cache build is recorded by `load` above, with its split
                purpose = "eval" if names & EVALUATION else "train"
                self.calls.append((_stage(names), purpose, None, {_patient_of(Path(image))}))
            return real_volume(image, label, *a, **kw)

        monkeypatch.setattr(tdata, "load", load)
        monkeypatch.setattr(nifti, "load_volume", load_volume)

    def patients(self, stage: str, purpose: str | None = None) -> set[str]:
        return {p for s, u, _, ps in self.calls if s == stage and (purpose is None or u == purpose) for p in ps}

    def stages(self) -> set[str]:
        return {s for s, *_ in self.calls}


def _splits(config: Any) -> dict[str, set[str]]:
    table = tdata.split_table(config.data.mri_dir, config)
    return {s: set(table.filter(table["split"] == s)["patient_id"].to_list()) for s in ("train", "val", "test")}


SPLITS = {
    # The study's shape: no validation patients (so EssNet's validation falls back to training CT), 2 test patients.
    "fixed-test-set": {"data.split.val": 0.0, "data.split.test": 0.34},
    # Patient-level folds: fold 1 of 3 is the test set.
    "folds": {"data.split.folds": 3, "data.split.fold": 1, "data.split.val": 0.0},
}


@pytest.fixture(params=list(SPLITS), ids=list(SPLITS))
def split(request: pytest.FixtureRequest) -> dict[str, Any]:
    return SPLITS[request.param]


def _trial(phantom_root: Path, tmp_path: Path, split: dict[str, Any], synthesis: str) -> Any:
    return tiny_config(
        phantom_root, stage="pipeline", synthesis=synthesis,
        **{**split, "data.train_patients": 1, "data.cache_dir": str(tmp_path / "slices"), "unet.mixing_ratio": 1.0,
           "unet.keep": "last", "seed": 1},
    )


@pytest.mark.filterwarnings("ignore:no CT validation patients")
def test_translator_judge_and_unet_never_train_on_test_patients(phantom_root, tmp_path, split, monkeypatch) -> None:
    spy = LoadSpy(monkeypatch)
    config = _trial(phantom_root, tmp_path, split, "essnet")
    groups = _splits(config)
    test, train = groups["test"], groups["train"]
    assert len(test) == 2 and len(train) == 4 and not groups["val"]

    run_pipeline(config, workdir=tmp_path / "essnet", cache_root=tmp_path / "cache")
    assert {"judge", "translator", "synthesis", "unet"} <= spy.stages()

    # The translator: CT and unlabelled MRI of training patients only (validation, panels included).
    assert spy.patients("translator") and not spy.patients("translator") & test
    assert spy.patients("translator") <= train
    # The synthetic set is written from training CT only.
    assert spy.patients("synthesis") and spy.patients("synthesis") <= train
    # The judge learns from every training patient (never data.train_patients' subset, never a test patient);
    # it only scores the test patients for its own held-out IoU.
    assert spy.patients("judge", "train") == train
    assert spy.patients("judge", "eval") == test
    # The U-Net: one labelled real patient (data.train_patients = 1) plus the synthetic CT slices.
    unet_train = spy.patients("unet", "train")
    assert not unet_train & test
    real = {p for s, u, sp, ps in spy.calls if s == "unet" and sp == "train" for p in ps}
    assert len(real) == 1 and real <= train
    # The spy sees the test patients where they belong: the U-Net's evaluation (it cannot pass vacuously).
    assert spy.patients("unet", "eval") == test


@pytest.mark.filterwarnings("ignore:no CT validation patients")
def test_intensity_arm_never_reads_test_patients(phantom_root, tmp_path, split, monkeypatch) -> None:
    spy = LoadSpy(monkeypatch)
    config = _trial(phantom_root, tmp_path, split, "intensity")
    test = _splits(config)["test"]
    run_pipeline(config, workdir=tmp_path / "intensity", cache_root=tmp_path / "cache")
    # The CT remapped to the MRI histogram of the training patients, never a test patient's.
    assert spy.patients("synthesis") and not spy.patients("synthesis") & test
    assert not spy.patients("unet", "train") & test
    assert spy.patients("unet", "eval") == test
