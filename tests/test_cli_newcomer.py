"""A new user's first commands: help texts, `data phantoms` -> `data inspect`, clear one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from liverlab.cli import build_parser, main


def _missing_help(parser: argparse.ArgumentParser, path: list[str]) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    missing.append(" ".join([*path, name]))
                missing += _missing_help(sub, [*path, name])
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
            missing.append(" ".join([*path, *(action.option_strings or [action.dest])]))
    return missing


def test_every_data_and_export_option_has_help() -> None:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        m for cmd in ("data", "export", "show-config", "validate") for m in _missing_help(subs.choices[cmd], [cmd])
    ]
    assert missing == []
    assert "first steps" in (parser.epilog or "")


# Run in a fresh interpreter: this test process has long imported everything.
_HELP_IMPORTS = """
import sys
from liverlab.cli import main
for argv in (["--help"], ["sweep", "--help"], ["data", "import-nifti", "--help"], ["report", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


def test_help_imports_no_heavy_library() -> None:
    """`liverlab --help` stays instant: no torch, ray or mlflow, nor the nibabel / polars / matplotlib the
    command modules promise to load only when a command runs (liverlab/*/commands.py)."""
    done = subprocess.run([sys.executable, "-c", _HELP_IMPORTS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: liverlab" in done.stdout and "liverlab sweep" in done.stdout
    loaded = set(done.stderr.split())
    assert "liverlab" in loaded
    assert loaded & {"torch", "ray", "mlflow", "nibabel", "polars", "matplotlib"} == set()


def test_inspect_shows_ct_and_mri_of_a_phantom_folder(phantom_root: Path, tmp_path: Path, capsys) -> None:
    png = tmp_path / "montage.png"
    assert main(["data", "inspect", str(phantom_root), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"{phantom_root / 'ct'} (ct, 6 cases)" in out and f"{phantom_root / 'mri'} (mri, 6 cases)" in out
    assert (tmp_path / "montage_ct.png").is_file() and (tmp_path / "montage_mri.png").is_file()
    assert not png.exists()
    assert main(["data", "inspect", str(phantom_root / "mri")]) == 0  # one dataset: as before
    assert "(mri, 6 cases)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "split", "{root}"],
        ["data", "manifest", "{root}"],
        ["export", "nnunet", "--real", "{root}", "--dataset-id", "1", "--out", "{tmp}/raw"],
    ],
)
def test_a_folder_of_datasets_where_one_is_needed(phantom_root: Path, tmp_path: Path, capsys, argv: list[str]) -> None:
    args = [a.format(root=phantom_root, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds the datasets ct/, mri/" in err and str(phantom_root / "mri") in err


def test_inspect_without_any_dataset(tmp_path: Path, capsys) -> None:
    assert main(["data", "inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no dataset.json here or in its sub-folders" in err and "liverlab data phantoms" in err


def test_phantoms_need_two_patients_and_say_what_next(tmp_path: Path, capsys) -> None:
    assert main(["data", "phantoms", "--out", str(tmp_path / "one"), "--patients", "1"]) == 2
    assert "--patients must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()
    assert (
        main(["data", "phantoms", "--out", str(tmp_path / "p"), "--patients", "2", "--size", "16", "--slices", "4"])
        == 0
    )
    assert f"next: liverlab data inspect {tmp_path / 'p'}" in capsys.readouterr().out


def test_train_imports_on_first_use(phantom_root: Path, tmp_path: Path, capsys) -> None:
    """`liverlab train` with data.import (here: the phantom MRI as NIfTI pairs) fills data.mri, then trains."""
    from conftest import TINY

    src = phantom_root / "mri"
    spec = f"{{kind: nifti, images: {src}/imagesTr/*_0000.nii.gz, labels: {src}/labelsTr/*.nii.gz, modality: mri}}"
    args = ["train", str(TINY), "--set", "data.root=null", "--set", "data.phantom=null",
            "--set", f"data.mri={tmp_path / 'mri'}",
            "--set", f"data.import={spec}", "--set", "unet.iterations=2", "--set", "unet.val_every=2",
            "--no-track", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    assert "first use: importing 1 source(s)" in capsys.readouterr().err
    assert json.loads((tmp_path / "mri" / "dataset.json").read_text())["numTraining"] == 6
    assert "import:" in (tmp_path / "run" / "config.yaml").read_text()  # the saved config keeps the key's name
