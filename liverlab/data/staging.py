"""All-or-nothing dataset imports: the staging steps every importer shares.

An importer (``importers.import_nifti``, ``chaos.import_chaos``) checks the
output folder with ``prepare_out``, writes every case into a ``staged``
folder inside it with ``save_case`` (after ``canonical`` reorients it to
RAS+), and only when every case succeeded calls ``commit``: the cases are
moved into place, then ``dataset.json`` and the manifest are (re)written. A
failure leaves ``out`` as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from liverlab.data import layout
from liverlab.data.atomic import staging_dir
from liverlab.data.manifest import build_manifest
from liverlab.data.nifti import compact_dtype, save_volume
from liverlab.errors import LiverlabError


def prepare_out(
    out: Path, modality: str, new_cases: list[str], labels: dict[str, int] | None = None
) -> dict[str, str]:
    """Check ``out`` can take ``new_cases`` labelled as ``labels`` (default liver only); return case -> patient."""
    patients: dict[str, str] = {}
    if (out / layout.DATASET_JSON).is_file():
        have = layout.dataset_modality(out)
        if have != modality:
            raise LiverlabError(f"{out}: holds {have} cases; cannot add {modality} cases to it")
        want, present = labels or layout.LIVER_ONLY, layout.dataset_labels(out)
        if want != present:
            raise LiverlabError(
                f"{out}: its cases are labelled {present}; cannot add cases labelled {want} (import into a new folder)"
            )
        existing = {case for case, _, _ in layout.list_cases(out)}
        patients = {case: layout.patients_of(out).get(case, case) for case in existing}
        clash = sorted(existing & set(new_cases))
        if clash:
            raise LiverlabError(f"{out}: case(s) already present: {', '.join(clash)} (choose another case id)")
    elif (out / layout.IMAGES).is_dir() and any((out / layout.IMAGES).iterdir()):
        raise LiverlabError(f"{out}: has {layout.IMAGES}/ but no {layout.DATASET_JSON}; not a dataset this tool wrote")
    return patients


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder inside ``out``; if ``out`` was created here and the import fails, remove it."""
    created = not out.exists()
    try:
        with staging_dir(out, prefix=".import-") as stage:
            yield stage
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def commit(
    out: Path, stage: Path, modality: str, patients: dict[str, str], cases: list[str],
    labels: dict[str, int] | None = None,
) -> None:
    """Move staged cases into ``out``, then write dataset.json and the manifest."""
    (out / layout.IMAGES).mkdir(parents=True, exist_ok=True)
    (out / layout.LABELS).mkdir(parents=True, exist_ok=True)
    for case in cases:
        # Label first: list_cases keys on images, so a case is visible only once complete.
        os.replace(layout.label_path(stage, case), layout.label_path(out, case))
        os.replace(layout.image_path(stage, case), layout.image_path(out, case))
    layout.write_dataset_json(out, modality, patients, labels)
    build_manifest(out)


def save_case(stage: Path, case: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    """Write one case's image and label (uint8) into the staging folder."""
    (stage / layout.IMAGES).mkdir(parents=True, exist_ok=True)
    (stage / layout.LABELS).mkdir(parents=True, exist_ok=True)
    save_volume(layout.image_path(stage, case), image, affine, dtype=compact_dtype(image))
    save_volume(layout.label_path(stage, case), label, affine, dtype=np.uint8)


def canonical(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient arrays + affine to RAS+ (the same transform nibabel.as_closest_canonical applies)."""
    img = nib.Nifti1Image(image, affine)
    canon = nib.as_closest_canonical(img)
    ornt = nib.orientations.io_orientation(affine)
    lab = nib.orientations.apply_orientation(label, ornt)
    return np.asarray(canon.dataobj), np.ascontiguousarray(lab), np.asarray(canon.affine)
