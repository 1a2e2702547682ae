"""``liverlab data ...`` sub-commands.

Nothing heavy is imported here at module level (no torch, nibabel, polars):
``liverlab --help`` must stay instant. Each handler imports what it needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _phantoms(args: argparse.Namespace) -> int:
    from liverlab.data.phantoms import generate_phantoms

    out = generate_phantoms(args.out, patients=args.patients, size=args.size, slices=args.slices, seed=args.seed)
    print(f"wrote {args.patients} phantom patients (CT + MRI, {args.size}x{args.size}x{args.slices}) to {out}")
    return 0


def _import_chaos_ct(args: argparse.Namespace) -> int:
    from liverlab.data.importers import import_chaos_ct

    out = import_chaos_ct(args.src, args.out, case_id=args.case_id)
    print(f"imported {args.src} into {out}")
    return 0


def _import_nifti(args: argparse.Namespace) -> int:
    from liverlab.data.importers import import_nifti

    out = import_nifti(args.images, args.labels, args.modality, args.liver_label, args.out)
    print(f"imported {args.modality} cases into {out}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from liverlab.data.manifest import describe_splits, split_dataset

    df = split_dataset(args.dir, args.val, args.test, args.seed)
    print(f"{Path(args.dir) / 'manifest.parquet'}: {describe_splits(df)}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from liverlab.data.inspect import inspect_dataset

    inspect_dataset(args.dir, args.png)
    if args.png:
        print(f"wrote {args.png}")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from liverlab.data.manifest import build_manifest, manifest_hash

    df = build_manifest(args.dir, progress=True)
    print(f"{Path(args.dir) / 'manifest.parquet'}: {df.height} cases, hash {manifest_hash(df)[:16]}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``data`` and its sub-commands to the ``liverlab`` parser."""
    data = subparsers.add_parser("data", help="datasets: phantoms, importers, manifest, splits, inspection")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = sub.add_parser("phantoms", help="generate paired CT/MRI phantoms (nnU-Net layout)")
    p.add_argument("--out", required=True, help="output folder (gets ct/ and mri/)")
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="in-plane voxels")
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_phantoms)

    p = sub.add_parser("import-chaos-ct", help="import one CHAOS CT case (DICOM_anon/ + Ground/)")
    p.add_argument("src", help="CHAOS CT case folder")
    p.add_argument("--out", required=True, help="nnU-Net CT folder to create or append to")
    p.add_argument("--case-id", default=None, help="default: ct_<folder name>")
    p.set_defaults(func=_import_chaos_ct)

    p = sub.add_parser("import-nifti", help="import NIfTI image/label pairs, keeping the liver label")
    p.add_argument("--images", required=True, metavar="GLOB", help="quoted glob of images, e.g. 'src/image_*.nii.gz'")
    p.add_argument("--labels", required=True, metavar="GLOB", help="quoted glob of labels")
    p.add_argument("--modality", required=True, choices=["ct", "mri"])
    p.add_argument("--liver-label", required=True, type=int, metavar="V", help="label value of the liver")
    p.add_argument("--out", required=True, help="nnU-Net folder to create or append to")
    p.set_defaults(func=_import_nifti)

    p = sub.add_parser("split", help="assign train/val/test by patient (writes the manifest's split column)")
    p.add_argument("dir", help="nnU-Net dataset folder")
    p.add_argument("--val", type=float, default=0.2)
    p.add_argument("--test", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_split)

    p = sub.add_parser("inspect", help="table of cases (+ PNG montage with the liver outlined)")
    p.add_argument("dir", help="nnU-Net dataset folder")
    p.add_argument("--png", default=None, metavar="FILE", help="write a montage PNG")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("manifest", help="build or refresh DIR/manifest.parquet")
    p.add_argument("dir", help="nnU-Net dataset folder")
    p.set_defaults(func=_manifest)
