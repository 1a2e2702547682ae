"""liverlab datasets -> one nnU-Net v2 raw dataset, with folds that keep synthetic cases out of validation.

    OUT/DatasetNNN_Name/imagesTr/<case>_0000.nii.gz
    OUT/DatasetNNN_Name/labelsTr/<case>.nii.gz
    OUT/DatasetNNN_Name/dataset.json        channel_names, labels, numTraining, file_ending
    OUT/DatasetNNN_Name/splits_final.json   K folds by patient over the real cases

Real cases are named ``real_<case>``, synthetic ones ``syn_<case>``, so the
two never collide (a synthetic MRI keeps the name of the CT it came from).
Every fold validates on real patients only: synthetic cases are in the
training list of every fold and in no validation list. nnU-Net reads
``splits_final.json`` from its *preprocessed* folder, so copy it to
``$nnUNet_preprocessed/DatasetNNN_Name/`` after ``nnUNetv2_plan_and_preprocess``
(the command prints this).

Files are copied byte for byte (liverlab writes image and label with one
affine, labels uint8: liver 1, organs 2.. when imported with them); the whole dataset is built in a staging folder
and renamed into place, so ``OUT`` never holds half a dataset.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverlab.data import layout
from liverlab.data.atomic import staging_dir, write_json_atomic
from liverlab.data.inspect import require_one_dataset
from liverlab.data.progress import track
from liverlab.errors import LiverlabError

REAL_PREFIX = "real_"
SYNTHETIC_PREFIX = "syn_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class ExportCase:
    """One case of the exported dataset."""

    name: str  # the nnU-Net case identifier
    patient: str  # split unit (real cases); synthetic cases carry their own name
    image: Path
    label: Path
    synthetic: bool


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset007_Liver``: nnU-Net's naming (three-digit id, then a name without spaces)."""
    if not 1 <= dataset_id <= 999:
        raise LiverlabError(f"--dataset-id must be in 1..999 (nnU-Net uses three digits), got {dataset_id}")
    if not _NAME_RE.match(name):
        raise LiverlabError(f"--name {name!r}: use letters, digits, '_' and '-' (starting with a letter or digit)")
    return f"Dataset{dataset_id:03d}_{name}"


def _cases(folder: Path, prefix: str, synthetic: bool, modality: str | None) -> tuple[str, list[ExportCase]]:
    what = "--synthetic" if synthetic else "--real"

    if not folder.is_dir():
        raise LiverlabError(f"{what} {folder}: no such folder")
    have = layout.dataset_modality(require_one_dataset(folder, what))
    if modality is not None and have != modality:
        raise LiverlabError(f"--synthetic {folder}: holds {have} cases but --real holds {modality}; one channel only")
    patients = layout.patients_of(folder)
    cases = [
        ExportCase(prefix + case, prefix + patients.get(case, case), image, label, synthetic)
        for case, image, label in layout.list_cases(folder)
    ]
    if not cases:
        raise LiverlabError(f"{what} {folder}: no cases in {layout.IMAGES}/")
    return have, cases


def make_splits(cases: list[ExportCase], folds: int = 5, seed: int = 0) -> list[dict[str, list[str]]]:
    """nnU-Net ``splits_final.json``: ``folds`` folds by patient over the real cases.

    Real patients are shuffled by ``seed`` and dealt round-robin into the
    folds (sizes differ by at most one); fold k validates on its patients'
    cases and trains on every other real case plus every synthetic case.
    With fewer real patients than ``folds``, there is one fold per patient.
    """
    if folds < 2:
        raise LiverlabError(f"--folds must be at least 2, got {folds}")
    real_patients = sorted({c.patient for c in cases if not c.synthetic})
    if len(real_patients) < 2:
        raise LiverlabError(f"--real: {len(real_patients)} patient(s); cross-validation folds need at least 2")
    k = min(folds, len(real_patients))
    order = [real_patients[i] for i in np.random.default_rng(seed).permutation(len(real_patients))]
    fold_of = {p: i % k for i, p in enumerate(order)}
    synthetic = sorted(c.name for c in cases if c.synthetic)
    splits = []
    for fold in range(k):
        val = sorted(c.name for c in cases if not c.synthetic and fold_of[c.patient] == fold)
        train = sorted(c.name for c in cases if not c.synthetic and fold_of[c.patient] != fold) + synthetic
        splits.append({"train": train, "val": val})
    return splits


def export_nnunet(
    real: str | Path,
    out: str | Path,
    dataset_id: int,
    synthetic: str | Path | None = None,
    name: str = "Liver",
    folds: int = 5,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``out/DatasetNNN_name`` from the real (and synthetic) liverlab datasets; return its path.

    An existing folder with the same dataset id is an error unless ``force``
    and it has the same name (then it is replaced, after the new one is complete).
    """
    folder_name = dataset_folder_name(dataset_id, name)
    out = Path(out)
    modality, cases = _cases(Path(real), REAL_PREFIX, False, None)
    labels = layout.dataset_labels(Path(real))  # liver only, or with the organs it was imported with
    if synthetic is not None and labels != layout.LIVER_ONLY:
        raise LiverlabError(
            f"{real}: labels {labels} include other organs, but synthetic MRI has liver masks only; "
            "export a liver-only import of the real MRI to mix them"
        )
    if synthetic is not None:
        cases += _cases(Path(synthetic), SYNTHETIC_PREFIX, True, modality)[1]
    splits = make_splits(cases, folds, seed)
    final = out / folder_name
    same_id = sorted(p.name for p in out.glob(f"Dataset{dataset_id:03d}_*")) if out.is_dir() else []
    others = [n for n in same_id if n != folder_name]
    if others:
        raise LiverlabError(
            f"{out}: dataset id {dataset_id} is taken by {', '.join(others)} (nnU-Net ids must be unique)"
        )
    if same_id and not force:
        raise LiverlabError(f"{final}: already exists (use --force to replace it)")
    with staging_dir(out, prefix=f".{folder_name}.export-") as stage:
        build = stage / folder_name
        (build / layout.IMAGES).mkdir(parents=True)
        (build / layout.LABELS).mkdir()
        for case in track(cases, f"export {folder_name}", total=len(cases), enabled=progress):
            shutil.copyfile(case.image, layout.image_path(build, case.name))
            shutil.copyfile(case.label, layout.label_path(build, case.name))
        n_syn = sum(c.synthetic for c in cases)
        write_json_atomic(
            build / layout.DATASET_JSON,
            {
                "channel_names": {"0": layout.CHANNEL_NAMES[modality]},
                "labels": labels,
                "numTraining": len(cases),
                "file_ending": layout.FILE_ENDING,
                "name": name,
                "description": f"liverlab export: {len(cases) - n_syn} real and {n_syn} synthetic cases "
                f"({REAL_PREFIX}* / {SYNTHETIC_PREFIX}*); splits_final.json validates on real patients only",
            },
        )
        write_json_atomic(build / "splits_final.json", splits)
        if final.exists():
            old = stage / "replaced"
            os.replace(final, old)  # removed with the staging folder
        os.replace(build, final)
    return final
