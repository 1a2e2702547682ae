"""The CHAOS release (DICOM slices + PNG masks) -> liverlab's nnU-Net folders.

The layout users download from Zenodo (record 3431873)::

    Train_Sets/CT/<id>/DICOM_anon/*.dcm, Ground/*.png          (liver: any non-zero pixel)
    Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm, Ground/*.png   (liver: 63, i.e. 55..70)
    Train_Sets/MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/*.dcm, Ground/*.png

``import_chaos`` takes the folder holding ``Train_Sets``, ``Train_Sets``
itself, its ``CT``/``MR`` folder, or one patient's folder, and writes one case
per patient: ``ct_<id>``, ``t2spir_<id>``, ``t1in_<id>`` or ``t1out_<id>``
(patient ids ``ct_<id>`` / ``mr_<id>``, so the MR sequences of one person
stay in one split). MR masks code several organs (liver 63, kidneys 126/189,
spleen 252); only the liver range (55 < v <= 70) is kept, as 1.

Geometry comes from the DICOM headers, never from file names: slices are
ordered by ImagePositionPatient along the slice normal, in-plane spacing from
PixelSpacing, orientation from ImageOrientationPatient. Every patient is read
and validated into a staging folder before anything appears in ``out``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverlab.data import layout
from liverlab.data.progress import track
from liverlab.data.staging import canonical, commit, prepare_out, save_case, staged
from liverlab.errors import LiverlabError

#: Relative tolerance on slice steps: CHAOS positions are exact to 0.01 mm.
SLICE_STEP_RTOL = 0.02
#: ``--modality`` choices -> (dataset modality, DICOM sub-path, Ground sub-path) inside a patient folder.
SERIES: dict[str, tuple[str, str, str]] = {
    "ct": ("ct", "DICOM_anon", "Ground"),
    "t2spir": ("mri", "T2SPIR/DICOM_anon", "T2SPIR/Ground"),
    "t1in": ("mri", "T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground"),
    "t1out": ("mri", "T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground"),
}
#: MR Ground PNG grey values that mean liver: 55 < v <= 70 (nominal 63), as in CHAOS's own evaluation code.
MR_LIVER_RANGE = (55, 70)


@dataclass(frozen=True)
class ChaosPatient:
    """One patient's series of the chosen modality."""

    patient: str  # the CHAOS id (folder name)
    dicom_dir: Path
    ground_dir: Path


# ----------------------------------------------------------------------------- files


def _number(name: str, last: bool) -> int | None:
    nums = re.findall(r"\d+", name)
    if not nums:
        return None
    return int(nums[-1] if last else nums[0])


def _read_dicom(path: Path) -> tuple[object, np.ndarray]:
    """(dataset, float32 pixel array (rows, cols) after RescaleSlope/Intercept) with clear errors."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise LiverlabError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        ts = f"{tsyntax.name} ({tsyntax})" if tsyntax is not None else "unknown"
        first = str(exc).strip().splitlines()
        reason = " ".join(line.strip() for line in first[:2]) if first else type(exc).__name__
        raise LiverlabError(
            f"{path}: cannot decode pixel data with transfer syntax {ts}: {reason} "
            "(the data is corrupt or no installed decoder handles it: add one such as pylibjpeg-openjpeg, "
            "or decompress the series first, e.g. with gdcmconv --raw)"
        ) from None
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if key not in ds:
            raise LiverlabError(f"{path}: missing DICOM attribute {key}")
    if pixels.ndim != 2:
        raise LiverlabError(f"{path}: expected one 2-D slice, got pixel array shape {pixels.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return ds, pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _read_mask(path: Path, shape: tuple[int, int], liver: tuple[int, int] | None) -> np.ndarray:
    """A PNG mask as uint8 liver = 1: any non-zero pixel (``liver`` None) or ``liver[0] < v <= liver[1]``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except Exception as exc:
        raise LiverlabError(f"{path}: not a readable PNG mask ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3:  # RGB(A) masks: grey value of the first channel, any non-zero channel for CT
        arr = arr[..., :3].max(axis=-1) if liver is None else arr[..., 0]
    if arr.shape != shape:
        raise LiverlabError(f"{path}: mask shape {arr.shape} differs from the DICOM slice shape {shape}")
    if liver is None:
        return (arr != 0).astype(np.uint8)
    return ((arr > liver[0]) & (arr <= liver[1])).astype(np.uint8)


def _pair_masks(dicoms: list[Path], masks: list[Path]) -> dict[Path, Path]:
    """DICOM file -> PNG mask.

    The same stem (MR: ``IMG-0002-00001.dcm`` <-> ``IMG-0002-00001.png``);
    else CT numbering (``i0028,0000b.dcm`` <-> ``liver_GT_028.png``: the first
    integer of the DICOM name, the last of the PNG name); else sorted file
    name order (T1DUAL: one Ground series for both phases).
    """
    by_stem = {m.stem: m for m in masks}
    if all(d.stem in by_stem for d in dicoms):
        return {d: by_stem[d.stem] for d in dicoms}
    dnum = {d: _number(d.name, last=False) for d in dicoms}
    mnum = {m: _number(m.name, last=True) for m in masks}
    by_num = {n: m for m, n in mnum.items()}
    if None not in dnum.values() and len(by_num) == len(masks) and set(dnum.values()) == set(by_num):
        return {d: by_num[n] for d, n in dnum.items() if n is not None}
    return dict(zip(sorted(dicoms), sorted(masks)))


def read_series(
    dicom_dir: Path, ground_dir: Path, liver: tuple[int, int] | None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CHAOS series -> (image (X, Y, Z) float32, liver mask uint8, RAS+ affine), not yet canonical.

    Arrays are stored X = column, Y = row, Z = slice in ImagePositionPatient
    order along the slice normal; the affine maps them to RAS+ millimetres.
    """
    for d in (dicom_dir, ground_dir):
        if not d.is_dir():
            raise LiverlabError(f"{d}: missing (a CHAOS series needs {dicom_dir.name}/ and its Ground/ folder)")
    dicoms = sorted(p for p in dicom_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    masks = sorted(p for p in ground_dir.iterdir() if p.suffix.lower() == ".png")
    if not dicoms:
        raise LiverlabError(f"{dicom_dir}: no DICOM files")
    if len(masks) != len(dicoms):
        raise LiverlabError(
            f"{dicom_dir}: {len(dicoms)} DICOM slices but {len(masks)} masks in {ground_dir} (they must match)"
        )
    pairs = _pair_masks(dicoms, masks)
    slices = []
    for path in track(dicoms, f"DICOM {dicom_dir.parent.name}", total=len(dicoms), enabled=progress):
        ds, pixels = _read_dicom(path)
        slices.append((path, ds, pixels))
    iop = np.array([float(v) for v in slices[0][1].ImageOrientationPatient], dtype=np.float64)  # type: ignore[attr-defined]
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    for path, ds, pixels in slices:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):  # type: ignore[attr-defined]
            raise LiverlabError(f"{path}: ImageOrientationPatient differs from the rest of the series")
        if pixels.shape != slices[0][2].shape:
            raise LiverlabError(f"{path}: slice shape {pixels.shape} differs from {slices[0][2].shape}")
    # Slice order from the position along the slice normal, never from file names.
    ipp = [[float(v) for v in ds.ImagePositionPatient] for _, ds, _ in slices]  # type: ignore[attr-defined]
    pos = np.asarray(ipp, dtype=np.float64) @ normal
    order = np.argsort(pos, kind="stable")
    slices = [slices[i] for i in order]
    pos = pos[order]
    if len(slices) > 1:
        steps = np.diff(pos)
        step = float(np.median(steps))
        if step <= 0 or not np.allclose(steps, step, rtol=SLICE_STEP_RTOL):
            raise LiverlabError(
                f"{dicom_dir}: slice positions are not evenly spaced "
                f"(steps {np.round(steps, 3).tolist()} mm; missing or duplicate slices?)"
            )
    else:
        step = float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
    first = slices[0][1]
    dr, dc = (float(v) for v in first.PixelSpacing)  # type: ignore[attr-defined]  # (between rows, between columns)
    # DICOM world is LPS: x = IPP + c*dc*row_dir + r*dr*col_dir + k*step*normal.
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = normal * step
    lps[:3, 3] = [float(v) for v in first.ImagePositionPatient]  # type: ignore[attr-defined]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS: negate x and y
    image = np.stack([px.T for _, _, px in slices], axis=-1)
    mask = np.stack([_read_mask(pairs[p], px.shape, liver).T for p, _, px in slices], axis=-1)
    return image, mask, affine


# ----------------------------------------------------------------------------- layout


def _is_patient(folder: Path, modality: str) -> bool:
    if modality == "ct":
        return (folder / "DICOM_anon").is_dir()
    return (folder / SERIES[modality][1].split("/")[0]).is_dir()


def find_patients(root: str | Path, modality: str) -> list[ChaosPatient]:
    """The patients of ``modality`` under ``root`` (see the module docstring for what ``root`` may be)."""
    if modality not in SERIES:
        raise LiverlabError(f"--modality must be one of {', '.join(SERIES)}, got {modality!r}")
    root = Path(root)
    if not root.is_dir():
        raise LiverlabError(f"{root}: no such folder")
    base = root / "Train_Sets" if (root / "Train_Sets").is_dir() else root
    kind = "CT" if modality == "ct" else "MR"
    if (base / kind).is_dir():
        base = base / kind
    elif base.name == "Train_Sets":
        have = sorted(p.name for p in base.iterdir() if p.is_dir())
        raise LiverlabError(
            f"{base}: no {kind}/ folder for --modality {modality} (found: {', '.join(have) or 'nothing'})"
        )
    _, dicom_sub, ground_sub = SERIES[modality]
    if _is_patient(base, modality):
        folders = [base]
    else:
        folders = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
        folders.sort(key=lambda p: (_number(p.name, last=False) is None, _number(p.name, last=False) or 0, p.name))
    if not folders:
        raise LiverlabError(
            f"{root}: no CHAOS {modality} patients (expected Train_Sets/{kind}/<id>/{dicom_sub}/ and {ground_sub}/)"
        )
    patients = []
    for folder in folders:
        if not (folder / dicom_sub).is_dir():
            raise LiverlabError(
                f"{folder}: no {dicom_sub}/ (not a CHAOS {kind} patient folder for --modality {modality})"
            )
        patients.append(ChaosPatient(folder.resolve().name, folder / dicom_sub, folder / ground_sub))
    return patients


def case_names(patient: str, modality: str) -> tuple[str, str]:
    """(case id, patient id) of a CHAOS patient: ``t2spir_1`` / ``mr_1``; ``ct_5`` / ``ct_5``."""
    pid = re.sub(r"[^A-Za-z0-9_.\-]", "_", patient)
    prefix = "ct" if modality == "ct" else "mr"
    return layout.check_case_id(f"{modality}_{pid}"), f"{prefix}_{pid}"


def import_chaos(
    root: str | Path, out: str | Path, modality: str = "ct", case_id: str | None = None, progress: bool = True
) -> Path:
    """Import every CHAOS patient of ``modality`` under ``root`` into ``out``; return ``out``.

    ``case_id`` renames the case when ``root`` holds exactly one patient.
    Appends to an existing dataset of the same modality (``ct`` or ``mri``);
    nothing is written unless every patient imports.
    """
    patients = find_patients(root, modality)
    target, _, _ = SERIES[modality]
    names = [case_names(p.patient, modality) for p in patients]
    if case_id is not None:
        if len(patients) != 1:
            raise LiverlabError(f"{root}: --case-id needs exactly one patient, found {len(patients)}")
        names = [(layout.check_case_id(case_id), layout.check_case_id(case_id))]
    out = Path(out)
    known = prepare_out(out, target, [c for c, _ in names])
    liver = None if modality == "ct" else MR_LIVER_RANGE
    many = len(patients) > 1
    with staged(out) as stage:
        items = list(zip(patients, names))
        for p, (case, patient_id) in track(items, f"import {modality}", total=len(items), enabled=progress and many):
            image, mask, affine = read_series(p.dicom_dir, p.ground_dir, liver, progress=progress and not many)
            if not mask.any():
                raise LiverlabError(f"{p.ground_dir}: no liver pixels in any mask")
            image, mask, affine = canonical(image, mask, affine)
            save_case(stage, case, image, mask, affine)
            known[case] = patient_id
        commit(out, stage, target, known, [c for c, _ in names])
    return out


def import_chaos_ct(src: str | Path, out: str | Path, case_id: str | None = None, progress: bool = True) -> Path:
    """One CHAOS CT patient folder (``DICOM_anon/`` + ``Ground/``): ``import_chaos(src, out, "ct")``.

    ``case_id`` defaults to ``ct_<src folder name>``.
    """
    src = Path(src)
    if not src.is_dir():
        raise LiverlabError(f"{src}: no such folder")
    if not _is_patient(src, "ct"):
        raise LiverlabError(f"{src}: expected the CHAOS layout with DICOM_anon/ and Ground/ (missing DICOM_anon/)")
    return import_chaos(src, out, "ct", case_id=case_id, progress=progress)
