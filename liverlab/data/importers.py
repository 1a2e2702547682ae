"""Importers: other layouts -> liverlab's nnU-Net folders (canonical RAS+, liver = 1).

* ``import_nifti``: image/label NIfTI pairs matched by case id, keeping one label value.
* the CHAOS release (DICOM + PNG masks) lives in ``chaos.py``; both use the
  staging steps of ``staging.py``.
* ``ensure_imported``: run configured imports into an empty folder on first
  use (``data.import``), under a file lock.

All read and validate every input before anything appears in ``out``:
cases are written to a staging folder inside ``out``, moved into place, and
only then is ``dataset.json`` (re)written and the manifest rebuilt. A failure
leaves ``out`` as it was.
"""

from __future__ import annotations

import glob as _glob
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liverlab.data import layout
from liverlab.data.atomic import staging_dir
from liverlab.data.chaos import import_chaos
from liverlab.data.nifti import load_volume
from liverlab.data.progress import track
from liverlab.data.staging import commit, prepare_out, save_case, staged
from liverlab.errors import LiverlabError

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
    images_glob: str, labels_glob: str, modality: str, liver_label: int, out: str | Path, progress: bool = True,
    organs: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Import image/label NIfTI pairs, keeping label value ``liver_label`` as liver (1).

    ``organs`` (name -> source label values) also keeps other organs, as labels
    2, 3, ... in the order given (dataset.json lists them); every other value
    becomes background. Cases are named ``<modality>_<id>`` (id from the file
    names, see ``case_ids_from_names``); the patient id equals the case name.
    Every pair is validated (shape/affine match, finite voxels, some liver)
    before it is written; all are reoriented to RAS+. Appends to an existing
    dataset labelled the same way.
    """
    layout.check_modality(modality)
    if not 0 < int(liver_label) <= 255:
        raise LiverlabError(f"--liver-label must be in 1..255, got {liver_label}")
    organs = {str(k): tuple(int(v) for v in vs) for k, vs in (organs or {}).items()}
    labels = layout.organ_labels(tuple(organs))
    taken = [int(liver_label)] + [v for vs in organs.values() for v in vs]
    if len(set(taken)) != len(taken) or not all(0 < v <= 255 for v in taken):
        raise LiverlabError(f"organs {organs}: source label values must be in 1..255, each used once, not the liver's")
    out = Path(out)
    pairs = pair_by_case(_expand(images_glob, "images"), _expand(labels_glob, "labels"))
    cases = {f"{modality}_{cid}": pair for cid, pair in pairs.items()}
    for case in cases:
        layout.check_case_id(case)
    patients = prepare_out(out, modality, list(cases), labels)
    with staged(out) as stage:
        for case, (img_path, lab_path) in track(
            list(cases.items()), f"import {modality}", total=len(cases), enabled=progress
        ):
            vol = load_volume(img_path, lab_path)
            assert vol.label is not None
            liver = (vol.label == int(liver_label)).astype(np.uint8)
            if not liver.any():
                values = sorted(int(v) for v in np.unique(vol.label))
                raise LiverlabError(f"{lab_path}: no voxels with liver label {liver_label} (values present: {values})")
            if organs:
                source = np.rint(vol.label).astype(np.int64)
                for name, values in organs.items():
                    liver[np.isin(source, values) & (liver == 0)] = labels[name]
            save_case(stage, case, vol.image, liver, vol.affine)
            patients[case] = case
        commit(out, stage, modality, patients, list(cases), labels)
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
    labels = layout.dataset_labels(target)  # read once, not once per spec
    for spec in specs:
        if spec.get("kind") != "nifti":
            continue
        want = layout.organ_labels(tuple(spec.get("organs") or {}))
        if want != labels:
            raise LiverlabError(
                f"{target}: imported earlier with labels {labels}, but data.import's organs now ask for {want}; "
                f"delete {target} to import again"
            )
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
        return import_nifti(
            spec["images"], spec["labels"], spec["modality"], int(spec["liver_label"]), out, progress,
            organs=spec.get("organs"),
        )
    if kind == "chaos":
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
