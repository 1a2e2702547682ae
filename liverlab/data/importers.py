"""Importers: other layouts -> liverlab's nnU-Net folders (canonical RAS+, liver = 1).

* ``import_chaos_ct``: the CHAOS CT release (``DICOM_anon/*.dcm`` + ``Ground/*.png``).
* ``import_nifti``: image/label NIfTI pairs matched by case id, keeping one label value.

Both read and validate every input before anything appears in ``out``:
cases are written to a staging folder inside ``out``, moved into place, and
only then is ``dataset.json`` (re)written and the manifest rebuilt. A failure
leaves ``out`` as it was.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from liverlab.data import layout
from liverlab.data.atomic import staging_dir
from liverlab.data.progress import track
from liverlab.errors import LiverlabError

#: Relative tolerance on slice steps: CHAOS positions are exact to 0.01 mm.
SLICE_STEP_RTOL = 0.02


# ----------------------------------------------------------------------------- shared


def _prepare_out(out: Path, modality: str, new_cases: list[str]) -> dict[str, str]:
    """Check ``out`` can take ``new_cases``; return its current case -> patient map."""
    patients: dict[str, str] = {}
    if (out / layout.DATASET_JSON).is_file():
        have = layout.dataset_modality(out)
        if have != modality:
            raise LiverlabError(f"{out}: holds {have} cases; cannot add {modality} cases to it")
        existing = {case for case, _, _ in layout.list_cases(out)}
        patients = {case: layout.patients_of(out).get(case, case) for case in existing}
        clash = sorted(existing & set(new_cases))
        if clash:
            raise LiverlabError(f"{out}: case(s) already present: {', '.join(clash)} (choose another case id)")
    elif (out / layout.IMAGES).is_dir() and any((out / layout.IMAGES).iterdir()):
        raise LiverlabError(f"{out}: has {layout.IMAGES}/ but no {layout.DATASET_JSON}; not a dataset this tool wrote")
    return patients


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A staging folder inside ``out``; if ``out`` was created here and the import fails, remove it."""
    created = not out.exists()
    try:
        with staging_dir(out, prefix=".import-") as stage:
            yield stage
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _commit(out: Path, stage: Path, modality: str, patients: dict[str, str], cases: list[str]) -> None:
    """Move staged cases into ``out``, then write dataset.json and the manifest."""
    from liverlab.data.manifest import build_manifest

    (out / layout.IMAGES).mkdir(parents=True, exist_ok=True)
    (out / layout.LABELS).mkdir(parents=True, exist_ok=True)
    for case in cases:
        # Label first: list_cases keys on images, so a case is visible only once complete.
        os.replace(layout.label_path(stage, case), layout.label_path(out, case))
        os.replace(layout.image_path(stage, case), layout.image_path(out, case))
    layout.write_dataset_json(out, modality, patients)
    build_manifest(out)


def _save_case(stage: Path, case: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    from liverlab.data.nifti import compact_dtype, save_volume

    (stage / layout.IMAGES).mkdir(parents=True, exist_ok=True)
    (stage / layout.LABELS).mkdir(parents=True, exist_ok=True)
    save_volume(layout.image_path(stage, case), image, affine, dtype=compact_dtype(image))
    save_volume(layout.label_path(stage, case), label, affine, dtype=np.uint8)


def _canonical(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient arrays + affine to RAS+ (the same transform nibabel.as_closest_canonical applies)."""
    import nibabel as nib

    img = nib.Nifti1Image(image, affine)
    canon = nib.as_closest_canonical(img)
    ornt = nib.orientations.io_orientation(affine)
    lab = nib.orientations.apply_orientation(label, ornt)
    return np.asarray(canon.dataobj), np.ascontiguousarray(lab), np.asarray(canon.affine)


# ----------------------------------------------------------------------------- CHAOS CT


def _number(name: str, last: bool) -> int | None:
    nums = re.findall(r"\d+", name)
    if not nums:
        return None
    return int(nums[-1] if last else nums[0])


def _read_dicom(path: Path) -> tuple[object, np.ndarray]:
    """(dataset, HU float32 pixel array (rows, cols)) with clear errors for bad files."""
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


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except Exception as exc:
        raise LiverlabError(f"{path}: not a readable PNG mask ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3:  # RGB(A) masks: any non-zero channel
        arr = arr[..., :3].max(axis=-1)
    if arr.shape != shape:
        raise LiverlabError(f"{path}: mask shape {arr.shape} differs from the DICOM slice shape {shape}")
    return (arr != 0).astype(np.uint8)


def _pair_masks(dicoms: list[Path], masks: list[Path]) -> dict[Path, Path]:
    """DICOM file -> PNG mask.

    CHAOS numbers them alike (``i0028,0000b.dcm`` <-> ``liver_GT_028.png``):
    pair by the first integer of the DICOM name and the last of the PNG name.
    When the numbers do not correspond one to one, pair by sorted file name.
    """
    dnum = {d: _number(d.name, last=False) for d in dicoms}
    mnum = {m: _number(m.name, last=True) for m in masks}
    by_num = {n: m for m, n in mnum.items()}
    if None not in dnum.values() and len(by_num) == len(masks) and set(dnum.values()) == set(by_num):
        return {d: by_num[n] for d, n in dnum.items() if n is not None}
    return dict(zip(sorted(dicoms), sorted(masks)))


def _chaos_volume(src: Path, progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a CHAOS CT folder into (HU (X, Y, Z), mask, RAS+ affine), not yet canonical."""
    ddir, gdir = src / "DICOM_anon", src / "Ground"
    for d in (ddir, gdir):
        if not d.is_dir():
            raise LiverlabError(f"{src}: expected the CHAOS layout with DICOM_anon/ and Ground/ (missing {d.name}/)")
    dicoms = sorted(p for p in ddir.iterdir() if p.is_file() and not p.name.startswith("."))
    masks = sorted(p for p in gdir.iterdir() if p.suffix.lower() == ".png")
    if not dicoms:
        raise LiverlabError(f"{ddir}: no DICOM files")
    if len(masks) != len(dicoms):
        raise LiverlabError(
            f"{src}: {len(masks)} masks in Ground/ but {len(dicoms)} DICOM slices in DICOM_anon/ (they must match)"
        )
    pairs = _pair_masks(dicoms, masks)
    slices = []
    for path in track(dicoms, f"DICOM {src.name}", total=len(dicoms), enabled=progress):
        ds, hu = _read_dicom(path)
        slices.append((path, ds, hu))
    iop = np.array([float(v) for v in slices[0][1].ImageOrientationPatient], dtype=np.float64)  # type: ignore[attr-defined]
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    for path, ds, hu in slices:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):  # type: ignore[attr-defined]
            raise LiverlabError(f"{path}: ImageOrientationPatient differs from the rest of the series")
        if hu.shape != slices[0][2].shape:
            raise LiverlabError(f"{path}: slice shape {hu.shape} differs from {slices[0][2].shape}")
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
                f"{ddir}: slice positions are not evenly spaced "
                f"(steps {np.round(steps, 3).tolist()} mm; missing or duplicate slices?)"
            )
    else:
        step = float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
    first = slices[0][1]
    dr, dc = (float(v) for v in first.PixelSpacing)  # type: ignore[attr-defined]  # (between rows, between columns)
    # Arrays are stored (X = column index, Y = row index, Z = slice). DICOM world
    # is LPS: x = IPP + c*dc*row_dir + r*dr*col_dir + k*step*normal.
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = normal * step
    lps[:3, 3] = [float(v) for v in first.ImagePositionPatient]  # type: ignore[attr-defined]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS: negate x and y
    image = np.stack([hu.T for _, _, hu in slices], axis=-1)
    mask = np.stack([_read_mask(pairs[p], hu.shape).T for p, _, hu in slices], axis=-1)
    return image, mask, affine


def import_chaos_ct(src: str | Path, out: str | Path, case_id: str | None = None, progress: bool = True) -> Path:
    """Import one CHAOS CT case (``src/DICOM_anon`` + ``src/Ground``) into ``out``; return ``out``.

    HU from RescaleSlope/Intercept, slice order and spacing from
    ImagePositionPatient, in-plane spacing from PixelSpacing, masks non-zero ->
    1. ``case_id`` defaults to ``ct_<src folder name>``; the patient id is the
    case id. Appends to an existing CT dataset in ``out``.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise LiverlabError(f"{src}: no such folder")
    case = layout.check_case_id(case_id or "ct_" + re.sub(r"[^A-Za-z0-9_.\-]", "_", src.resolve().name))
    patients = _prepare_out(out, "ct", [case])
    image, mask, affine = _chaos_volume(src, progress)
    if not mask.any():
        raise LiverlabError(f"{src / 'Ground'}: no liver pixels in any mask")
    image, mask, affine = _canonical(image, mask, affine)
    with _staged(out) as stage:
        _save_case(stage, case, image, mask, affine)
        patients[case] = case
        _commit(out, stage, "ct", patients, [case])
    return out


# ----------------------------------------------------------------------------- NIfTI pairs

_EXT = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_SEP = re.compile(r"[_\-. ]+")


def _tokens(path: Path) -> list[str]:
    return [t for t in _SEP.split(_EXT.sub("", path.name)) if t]


def case_ids_from_names(paths: list[Path]) -> dict[Path, str]:
    """Case id per file: the file name's tokens minus those every file shares.

    Names are split into tokens at ``_ - .`` (extension removed); the longest
    token prefix and suffix common to *all* files of the list are dropped and
    the rest, joined by ``_``, is the id: ``image_1``/``image_12`` -> ``1``/``12``,
    ``label_1`` -> ``1``, ``case_007_0000`` -> ``007``. The rule is applied to
    images and labels separately, so their prefixes may differ. A list of one
    file keeps its whole name (minus a trailing nnU-Net ``_0000``).
    """
    toks = {p: _tokens(p) for p in paths}
    if len(paths) == 1:
        t = toks[paths[0]]
        if len(t) > 1 and t[-1] == "0000":
            t = t[:-1]
        return {paths[0]: "_".join(t)}
    lists = list(toks.values())
    shortest = min(len(t) for t in lists)
    pre = 0
    while pre < shortest - 1 and all(t[pre] == lists[0][pre] for t in lists):
        pre += 1
    suf = 0
    while suf < shortest - pre - 1 and all(t[-1 - suf] == lists[0][-1 - suf] for t in lists):
        suf += 1
    return {p: "_".join(t[pre : len(t) - suf]) for p, t in toks.items()}


def _expand(pattern: str, what: str) -> list[Path]:
    files = sorted(Path(p) for p in _glob.glob(os.path.expanduser(pattern)) if Path(p).is_file())
    if not files:
        raise LiverlabError(f"--{what} {pattern!r}: no files match")
    return files


def pair_by_case(images: list[Path], labels: list[Path]) -> dict[str, tuple[Path, Path]]:
    """case id -> (image, label); unmatched or duplicate ids are a LiverlabError listing them."""
    if len(images) == 1 and len(labels) == 1:
        return {case_ids_from_names(images)[images[0]]: (images[0], labels[0])}
    iid, lid = case_ids_from_names(images), case_ids_from_names(labels)
    for ids, kind in ((iid, "image"), (lid, "label")):
        seen: dict[str, Path] = {}
        for p, c in ids.items():
            if c in seen:
                raise LiverlabError(f"{kind}s {seen[c]} and {p} both give case id {c!r}")
            seen[c] = p
    by_l = {c: p for p, c in lid.items()}
    by_i = {c: p for p, c in iid.items()}
    unmatched = [str(p) for c, p in by_i.items() if c not in by_l] + [str(p) for c, p in by_l.items() if c not in by_i]
    if unmatched:
        raise LiverlabError(f"files without a partner (case ids from file names): {', '.join(sorted(unmatched))}")
    return {c: (by_i[c], by_l[c]) for c in sorted(by_i)}


def import_nifti(
    images_glob: str, labels_glob: str, modality: str, liver_label: int, out: str | Path, progress: bool = True
) -> Path:
    """Import image/label NIfTI pairs, keeping label value ``liver_label`` as liver (1).

    Cases are named ``<modality>_<id>`` (id from the file names, see
    ``case_ids_from_names``); the patient id equals the case name. Every pair
    is validated (shape/affine match, finite voxels, some liver) before it is
    written; all are reoriented to RAS+. Appends to an existing dataset.
    """
    from liverlab.data.nifti import load_volume

    layout.check_modality(modality)
    if not 0 < int(liver_label) <= 255:
        raise LiverlabError(f"--liver-label must be in 1..255, got {liver_label}")
    out = Path(out)
    pairs = pair_by_case(_expand(images_glob, "images"), _expand(labels_glob, "labels"))
    cases = {f"{modality}_{cid}": pair for cid, pair in pairs.items()}
    for case in cases:
        layout.check_case_id(case)
    patients = _prepare_out(out, modality, list(cases))
    with _staged(out) as stage:
        for case, (img_path, lab_path) in track(list(cases.items()), f"import {modality}", total=len(cases), enabled=progress):
            vol = load_volume(img_path, lab_path)
            assert vol.label is not None
            liver = (vol.label == int(liver_label)).astype(np.uint8)
            if not liver.any():
                values = sorted(int(v) for v in np.unique(vol.label))
                raise LiverlabError(f"{lab_path}: no voxels with liver label {liver_label} (values present: {values})")
            _save_case(stage, case, vol.image, liver, vol.affine)
            patients[case] = case
        _commit(out, stage, modality, patients, list(cases))
    return out
