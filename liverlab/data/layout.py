"""The nnU-Net (v2) folder layout every liverlab dataset uses.

    DIR/imagesTr/<case>_0000.nii.gz
    DIR/labelsTr/<case>.nii.gz
    DIR/dataset.json          channel name CT or MRI, labels, numTraining
    DIR/manifest.parquet      liverlab's case table (manifest.py)

``dataset.json`` also carries ``liverlab_patients`` (case id -> patient id)
when a patient has several cases or ids differ; nnU-Net ignores unknown keys.
When absent, the patient id is the case id.

The liver is always label 1. A dataset imported with other organs (the
import's ``organs``) labels them 2, 3, ... in the order given, and its
``labels`` lists them; everything that measures the liver reads label 1 only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from liverlab.data.atomic import write_json_atomic
from liverlab.errors import LiverlabError

Modality = Literal["ct", "mri"]
MODALITIES: tuple[str, ...] = ("ct", "mri")
CHANNEL_NAMES: dict[str, str] = {"ct": "CT", "mri": "MRI"}
IMAGES = "imagesTr"
LABELS = "labelsTr"
DATASET_JSON = "dataset.json"
FILE_ENDING = ".nii.gz"
CHANNEL_SUFFIX = "_0000"

_CASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ORGAN_RE = re.compile(r"^[a-z][a-z0-9_]*$")
LIVER_ONLY: dict[str, int] = {"background": 0, "liver": 1}


def check_modality(modality: str) -> str:
    """Return ``modality`` or raise for anything but ``ct`` / ``mri``."""
    if modality not in MODALITIES:
        raise LiverlabError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    return modality


def check_case_id(case_id: str) -> str:
    """Case ids become file names: letters, digits, ``_ . -`` only."""
    if not _CASE_RE.match(case_id):
        raise LiverlabError(
            f"case id {case_id!r}: use letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return case_id


def image_path(dataset_dir: Path, case_id: str) -> Path:
    return Path(dataset_dir) / IMAGES / f"{case_id}{CHANNEL_SUFFIX}{FILE_ENDING}"


def label_path(dataset_dir: Path, case_id: str) -> Path:
    return Path(dataset_dir) / LABELS / f"{case_id}{FILE_ENDING}"


def organ_labels(organs: list[str] | tuple[str, ...] = ()) -> dict[str, int]:
    """``labels`` of a dataset.json: background 0, liver 1, then ``organs`` 2, 3, ... in order."""
    for name in organs:
        if not _ORGAN_RE.match(name) or name in LIVER_ONLY:
            raise LiverlabError(f"organ name {name!r}: use lower-case letters, digits and '_', not background or liver")
    if len(set(organs)) != len(organs):
        raise LiverlabError(f"organ names repeat: {list(organs)}")
    return {**LIVER_ONLY, **{name: 2 + k for k, name in enumerate(organs)}}


def dataset_json(
    modality: str, num_training: int, patients: dict[str, str] | None = None, labels: dict[str, int] | None = None
) -> dict[str, Any]:
    """An nnU-Net v2 ``dataset.json``: liver only, or with the organs of ``labels`` (``organ_labels``)."""
    check_modality(modality)
    out: dict[str, Any] = {
        "channel_names": {"0": CHANNEL_NAMES[modality]},
        "labels": dict(labels) if labels is not None else dict(LIVER_ONLY),
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
    }
    if patients and any(case != patient for case, patient in patients.items()):
        out["liverlab_patients"] = dict(sorted(patients.items()))
    return out


def read_dataset_json(dataset_dir: str | Path) -> dict[str, Any]:
    """Parse ``DIR/dataset.json`` (LiverlabError naming the file when missing or bad)."""
    path = Path(dataset_dir) / DATASET_JSON
    if not path.is_file():
        raise LiverlabError(
            f"{path}: no such file (not an nnU-Net dataset folder; expected imagesTr/, labelsTr/, dataset.json)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LiverlabError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "channel_names" not in data:
        raise LiverlabError(f"{path}: missing 'channel_names'")
    return data


def dataset_modality(dataset_dir: str | Path) -> str:
    """``ct`` or ``mri`` from the dataset.json channel name."""
    data = read_dataset_json(dataset_dir)
    channel = str(dict(data["channel_names"]).get("0", "")).upper()
    for modality, name in CHANNEL_NAMES.items():
        if channel == name or (modality == "mri" and channel in ("MR", "T2", "T1")):
            return modality
    raise LiverlabError(f"{Path(dataset_dir) / DATASET_JSON}: channel name {channel!r} is neither CT nor MRI")


def dataset_labels(dataset_dir: str | Path) -> dict[str, int]:
    """``labels`` of dataset.json (name -> value); the liver must be 1 and values 0..n-1, or a LiverlabError."""
    path = Path(dataset_dir) / DATASET_JSON
    raw = read_dataset_json(dataset_dir).get("labels", LIVER_ONLY)
    try:
        labels = {str(k): int(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        raise LiverlabError(f"{path}: 'labels' must map names to integer values, got {raw!r}") from None
    if labels.get("background") != 0 or labels.get("liver") != 1 or sorted(labels.values()) != list(range(len(labels))):
        raise LiverlabError(f"{path}: 'labels' must be background 0, liver 1, other organs 2.. (got {labels})")
    return labels


def patients_of(dataset_dir: str | Path) -> dict[str, str]:
    """case id -> patient id as recorded in dataset.json (may be partial)."""
    data = read_dataset_json(dataset_dir)
    return {str(k): str(v) for k, v in dict(data.get("liverlab_patients", {})).items()}


def list_cases(dataset_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(case id, image, label) for every image in ``imagesTr``, sorted by case id.

    An image without its label is an error: a dataset is only usable whole.
    """
    root = Path(dataset_dir)
    images = sorted((root / IMAGES).glob(f"*{CHANNEL_SUFFIX}{FILE_ENDING}"))
    out = []
    for img in images:
        case = img.name[: -len(CHANNEL_SUFFIX + FILE_ENDING)]
        if case.startswith("."):
            continue  # a temporary file of a write in progress
        lab = label_path(root, case)
        if not lab.is_file():
            raise LiverlabError(f"{img}: no label {lab}")
        out.append((case, img, lab))
    return out


def write_dataset_json(
    dataset_dir: str | Path, modality: str, patients: dict[str, str], labels: dict[str, int] | None = None
) -> None:
    """(Re)write ``dataset.json`` atomically for the cases now in the folder.

    ``labels`` None keeps the labels of the dataset.json already there (liver only when none is).
    """
    root = Path(dataset_dir)
    n = len(list_cases(root))
    if labels is None and (root / DATASET_JSON).is_file():
        labels = dataset_labels(root)
    write_json_atomic(root / DATASET_JSON, dataset_json(modality, n, patients, labels))
