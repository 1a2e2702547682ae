"""Importers: other layouts -> liverlab's nnU-Net folders (canonical RAS+, liver = 1).

* ``import_nifti``: image/label NIfTI pairs matched by case id, keeping one label value.
* the CHAOS release (DICOM + PNG masks) lives in ``chaos.py`` and uses the
  shared staging helpers below.
* ``ensure_imported``: run configured imports into an empty folder on first
  use (``data.import``), under a file lock.

All read and validate every input before anything appears in ``out``:
cases are written to a staging folder inside ``out``, moved into place, and
only then is ``dataset.json`` (re)written and the manifest rebuilt. A failure
leaves ``out`` as it was.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liverlab.data import layout
from liverlab.data.atomic import staging_dir
from liverlab.data.progress import track
from liverlab.errors import LiverlabError

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


# ----------------------------------------------------------------------------- first use (data.import)


def import_domain(spec: Mapping[str, Any]) -> str:
    """``ct`` or ``mri``: the dataset folder an import spec fills (``data.ct`` or ``data.mri``)."""
    return "ct" if spec["modality"] == "ct" else "mri"


def _check_not_stale(target: Path, specs: Sequence[Mapping[str, Any]]) -> None:
    """LiverlabError when a ``nifti`` source now matches cases the imported ``target`` lacks.

    A folder imported when the source held fewer files (the shared CHAOS MR folder grew
    from 5 to 12 patients) would otherwise be used silently. Sources that match nothing
    here (data moved, a copied dataset) are not checked: the import is done.
    """
    have = {case for case, _, _ in layout.list_cases(target)}
    for spec in specs:
        if spec.get("kind") != "nifti":
            continue
        images = sorted(Path(p) for p in _glob.glob(os.path.expanduser(spec["images"])) if Path(p).is_file())
        if not images:
            continue
        expected = {f"{spec['modality']}_{cid}" for cid in case_ids_from_names(images).values()}
        missing = sorted(expected - have)
        if missing:
            raise LiverlabError(
                f"{target}: imported earlier with {len(have)} case(s), but data.import's images {spec['images']!r} now "
                f"also match {', '.join(missing)}; delete {target} to import all {len(expected)} again"
            )


def run_import(spec: Mapping[str, Any], out: str | Path, progress: bool = False) -> Path:
    """Run one ``data.import`` entry (``kind`` nifti or chaos) into ``out``."""
    kind = spec["kind"]
    if kind == "nifti":
        return import_nifti(spec["images"], spec["labels"], spec["modality"], int(spec["liver_label"]), out, progress)
    if kind == "chaos":
        from liverlab.data.chaos import import_chaos

        return import_chaos(spec["root"], out, spec["modality"], progress=progress)
    raise LiverlabError(f"data.import: unknown kind {kind!r} (nifti or chaos)")


def ensure_imported(target: str | Path, specs: Sequence[Mapping[str, Any]], log: bool = True) -> Path:
    """Fill ``target`` from ``specs`` unless it already holds a dataset (``dataset.json``); return it.

    Safe under concurrency (parallel Ray trials): a file lock on
    ``target.parent/<target.name>.lock`` makes one process import while the
    others wait and reuse the result. All specs are imported into a staging
    folder beside ``target``, which is renamed into place only when every one
    succeeded, so a failed import leaves no half dataset for the next run to
    mistake for a finished one. A non-empty ``target`` without
    ``dataset.json`` is not ours and is an error.
    """
    from filelock import FileLock

    target = Path(target)
    if (target / layout.DATASET_JSON).is_file():
        _check_not_stale(target, specs)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f"{target.name}.lock")):
        if (target / layout.DATASET_JSON).is_file():
            return target
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise LiverlabError(
                f"{target}: exists but holds no dataset.json; data.import only fills a new or empty folder "
                "(delete it, or point the config at another folder)"
            )
        if log:
            print(f"liverlab: first use: importing {len(specs)} source(s) into {target}", file=sys.stderr)
        with staging_dir(target.parent, prefix=f".{target.name}.import-") as stage:
            build = stage / target.name
            for spec in specs:
                try:
                    run_import(spec, build, progress=False)
                except LiverlabError as err:
                    raise LiverlabError(f"data.import ({spec['kind']}, modality {spec['modality']}): {err}") from None
            if target.is_dir():
                target.rmdir()
            os.replace(build, target)
    return target
