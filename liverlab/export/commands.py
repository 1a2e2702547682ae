"""``liverlab export ...`` sub-commands (nothing heavy imported at module level)."""

from __future__ import annotations

import argparse


def _nnunet(args: argparse.Namespace) -> int:
    import json

    from liverlab.export.nnunet import export_nnunet

    folder = export_nnunet(
        args.real, args.out, args.dataset_id, synthetic=args.synthetic, name=args.name,
        folds=args.folds, seed=args.seed, force=args.force,
    )  # fmt: skip
    meta = json.loads((folder / "dataset.json").read_text())
    splits = json.loads((folder / "splits_final.json").read_text())
    print(f"wrote {folder}: {meta['numTraining']} cases, {len(splits)} folds (validation on real patients only)")
    print("nnU-Net reads the folds from its preprocessed folder: "
          f"after nnUNetv2_plan_and_preprocess -d {args.dataset_id}, "
          f"copy {folder / 'splits_final.json'} to $nnUNet_preprocessed/{folder.name}/")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``export`` and its sub-commands to the ``liverlab`` parser."""
    export = subparsers.add_parser("export", help="write datasets in other tools' formats (nnU-Net v2)",
                                   description="Write liverlab datasets in other tools' formats.")
    sub = export.add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    p = sub.add_parser(
        "nnunet", help="an nnU-Net v2 raw dataset (real + synthetic cases, folds validating on real patients only)",
        description="Write OUT/DatasetNNN_NAME (imagesTr, labelsTr, dataset.json) and splits_final.json: "
        "5 folds by patient over the real cases, synthetic cases in every training list and no validation list.",
        epilog="Cases are named `real_*` / `syn_*`; --folds K sets the number of folds. Copy splits_final.json to "
        "$nnUNet_preprocessed/DatasetNNN_NAME/ after nnUNetv2_plan_and_preprocess. An existing dataset id is "
        "replaced only with --force.",
    )
    p.add_argument(
        "--real", required=True, metavar="DIR", help="liverlab dataset folder of real cases (e.g. data/chaos/mri)"
    )
    p.add_argument(
        "--synthetic", default=None, metavar="DIR", help="liverlab dataset of synthetic cases (liverlab synthesize)"
    )
    p.add_argument("--dataset-id", required=True, type=int, metavar="N", help="nnU-Net dataset id, 1..999")
    p.add_argument("--name", default="Liver", help="dataset name after the id (default Liver)")
    p.add_argument("--out", required=True, metavar="DIR", help="nnU-Net raw folder ($nnUNet_raw)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over real patients (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-to-fold assignment")
    p.add_argument("--force", action="store_true", help="replace an existing DatasetNNN_NAME folder")
    p.set_defaults(func=_nnunet)
