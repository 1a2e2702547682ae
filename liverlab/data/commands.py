"""``liverlab data ...`` sub-commands.

Nothing heavy is imported here at module level (no torch, nibabel, polars):
``liverlab --help`` must stay instant. Each handler imports what it needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _phantoms(args: argparse.Namespace) -> int:
    from liverlab.data.phantoms import generate_phantoms
    from liverlab.errors import LiverlabError

    if args.patients < 2:  # the same bound as data.phantom.patients: patient-level splits need two
        raise LiverlabError(f"phantoms: --patients must be at least 2 (splits are by patient), got {args.patients}")
    out = generate_phantoms(args.out, patients=args.patients, size=args.size, slices=args.slices, seed=args.seed)
    print(f"wrote {args.patients} phantom patients (CT + MRI, {args.size}x{args.size}x{args.slices}) "
          f"to {out}/ct and {out}/mri")
    print(f"next: liverlab data inspect {out}   (or point an experiment's data.root at {out})")
    return 0


def _import_chaos(args: argparse.Namespace) -> int:
    from liverlab.data.chaos import import_chaos
    from liverlab.data.layout import list_cases

    out = import_chaos(args.root, args.out, args.modality, case_id=args.case_id)
    print(f"imported CHAOS {args.modality} from {args.root} into {out} "
          f"({len(list_cases(out))} case(s) in the dataset now)")
    return 0


def _import_chaos_ct(args: argparse.Namespace) -> int:
    from liverlab.data.chaos import import_chaos_ct

    out = import_chaos_ct(args.src, args.out, case_id=args.case_id)
    print(f"imported {args.src} into {out}")
    return 0


def _import_nifti(args: argparse.Namespace) -> int:
    from liverlab.data.importers import import_nifti
    from liverlab.errors import LiverlabError

    organs: dict[str, list[int]] = {}
    for item in args.organ or []:  # NAME=V[,V...]
        name, sep, values = item.partition("=")
        try:
            organs[name.strip()] = [int(v) for v in values.split(",")]
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise LiverlabError(f"--organ {item!r}: expected NAME=V[,V...], e.g. spleen=4 or kidneys=2,3")
    out = import_nifti(args.images, args.labels, args.modality, args.liver_label, args.out, organs=organs)
    print(f"imported {args.modality} cases into {out}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from liverlab.data.inspect import require_one_dataset
    from liverlab.data.manifest import describe_splits, split_dataset

    df = split_dataset(require_one_dataset(args.dir), args.val, args.test, args.seed)
    print(f"{Path(args.dir) / 'manifest.parquet'}: {describe_splits(df)}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from liverlab.data.inspect import inspect_dataset, montage_paths

    tables = inspect_dataset(args.dir, args.png)
    if args.png:
        for png in montage_paths(list(tables), Path(args.png)).values():
            print(f"wrote {png}")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from liverlab.data.inspect import require_one_dataset
    from liverlab.data.manifest import build_manifest, manifest_hash

    df = build_manifest(require_one_dataset(args.dir), progress=True)
    print(f"{Path(args.dir) / 'manifest.parquet'}: {df.height} cases, hash {manifest_hash(df)[:16]}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``data`` and its sub-commands to the ``liverlab`` parser."""
    data = subparsers.add_parser(
        "data", help="datasets: phantoms, importers, manifest, splits, inspection",
        description="Make, import and look at datasets (nnU-Net layout: imagesTr/, labelsTr/, dataset.json). "
        "Start with `liverlab data phantoms --out data/phantoms` (no download needed).",
    )
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = sub.add_parser("phantoms", help="generate paired CT/MRI phantoms (nnU-Net layout)",
                       description="Paired CT/MRI phantoms of the same anatomy (body, fat, liver, spleen, kidneys, "
                       "spine, vessels; per-patient deformations), nnU-Net layout, under OUT/ct and OUT/mri.")
    p.add_argument("--out", required=True, help="output folder (gets ct/ and mri/)")
    p.add_argument(
        "--patients", type=int, default=8, help="patients, each with a CT and an MRI (default 8, at least 2)"
    )
    p.add_argument("--size", type=int, default=64, help="in-plane voxels, 16..1024 (default 64)")
    p.add_argument("--slices", type=int, default=16, help="slices per volume, 2..512 (default 16)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical phantoms (default 0)")
    p.set_defaults(func=_phantoms)

    p = sub.add_parser(
        "import-chaos", help="import the CHAOS release (DICOM + PNG masks), one case per patient",
        description="Import the CHAOS release as downloaded (Train_Sets/CT/<id>/{DICOM_anon,Ground}, "
        "Train_Sets/MR/<id>/T2SPIR/{DICOM_anon,Ground}, T1DUAL/{DICOM_anon/{InPhase,OutPhase},Ground}): "
        "one case per patient (ct_<id>, t2spir_<id>, ...), liver = 1 (CT: any non-zero mask pixel; "
        "MR: grey value 55 < v <= 70), slice order from ImagePositionPatient.",
        epilog="ROOT is the folder holding `Train_Sets`, `Train_Sets` itself, its CT/ or MR/ folder, or one patient "
        "folder. An MR case's patient id is `mr_<id>` (kidneys and spleen are dropped from its mask); slice order and "
        "affine come from the DICOM geometry; all patients are written or none. `import-chaos-ct SRC` is the same "
        "for one CT patient folder.",
    )
    p.add_argument(
        "root", help="folder holding Train_Sets/, Train_Sets/ itself, its CT/ or MR/ folder, or one patient folder"
    )
    p.add_argument("--out", required=True, help="nnU-Net folder to create or append to (e.g. data/chaos/mri)")
    p.add_argument("--modality", default="ct", choices=["ct", "t2spir", "t1in", "t1out"],
                   help="series to import (default ct; t1in / t1out: T1DUAL in-phase / opposed-phase)")
    p.add_argument(
        "--case-id", default=None, help="case id when ROOT holds one patient (default <modality>_<folder name>)"
    )
    p.set_defaults(func=_import_chaos)

    p = sub.add_parser(
        "import-chaos-ct", help="import one CHAOS CT patient folder (alias of import-chaos --modality ct)"
    )
    p.add_argument("src", help="CHAOS CT patient folder (DICOM_anon/ + Ground/)")
    p.add_argument("--out", required=True, help="nnU-Net CT folder to create or append to")
    p.add_argument("--case-id", default=None, help="default: ct_<folder name>")
    p.set_defaults(func=_import_chaos_ct)

    p = sub.add_parser("import-nifti", help="import NIfTI image/label pairs, keeping the liver label",
                       description="Import NIfTI image/label pairs (e.g. the preprocessed CHAOS MR, "
                       "multi-label masks) into the nnU-Net layout; the liver label becomes 1, others 0 "
                       "(unless --organ keeps them).")
    p.add_argument("--images", required=True, metavar="GLOB", help="quoted glob of images, e.g. 'src/image_*.nii.gz'")
    p.add_argument("--labels", required=True, metavar="GLOB", help="quoted glob of labels")
    p.add_argument("--modality", required=True, choices=["ct", "mri"], help="the images' modality")
    p.add_argument("--liver-label", required=True, type=int, metavar="V",
                   help="label value of the liver, kept as 1; other labels become 0 (CHAOS MR NIfTI: 1)")
    p.add_argument("--organ", action="append", metavar="NAME=V[,V]",
                   help="also keep an organ as label 2, 3, ... in the order given, for unet.organs (auxiliary "
                   "classes); repeatable; CHAOS MR: --organ spleen=4 --organ kidneys=2,3")
    p.add_argument("--out", required=True, help="nnU-Net folder to create or append to")
    p.set_defaults(func=_import_nifti)

    p = sub.add_parser("split", help="assign train/val/test by patient (writes the manifest's split column)",
                       description="Patient-level train/val/test splits into the manifest (never by slice), "
                       "fixed by the seed.")
    p.add_argument("dir", help="nnU-Net dataset folder")
    p.add_argument("--val", type=float, default=0.2, help="share of patients for validation (default 0.2)")
    p.add_argument("--test", type=float, default=0.2, help="share of patients for test (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient shuffle (default 0)")
    p.set_defaults(func=_split)

    p = sub.add_parser("inspect", help="table of cases (+ PNG montage with the liver outlined)",
                       description="A table of the cases and a PNG montage with the liver outlined. DIR may hold "
                       "several datasets (`ct/` and `mri/` of `data phantoms`): one table and FILE_ct.png / "
                       "FILE_mri.png each.")
    p.add_argument("dir", help="nnU-Net dataset folder, or a folder holding several (ct/ and mri/ of `data phantoms`)")
    p.add_argument("--png", default=None, metavar="FILE",
                   help="write a montage PNG (several datasets: FILE_ct.png, FILE_mri.png)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("manifest", help="build or refresh DIR/manifest.parquet (the case table)")
    p.add_argument("dir", help="nnU-Net dataset folder")
    p.set_defaults(func=_manifest)
