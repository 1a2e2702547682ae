"""Bad input through the CLI: one line naming the file and problem, exit 2, nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from data_helpers import AFFINE, tiny_phantoms, write_pair

from liverlab.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def _assert_one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("liverlab: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _import(src: Path, out: Path, name: str = "1", liver_label: int = 1) -> list[str]:
    return [
        "data", "import-nifti",
        "--images", str(src / f"image_{name}.nii.gz"), "--labels", str(src / f"label_{name}.nii.gz"),
        "--modality", "mri", "--liver-label", str(liver_label), "--out", str(out),
    ]  # fmt: skip


def _nothing_written(out: Path) -> None:
    assert not (out / "dataset.json").exists() and not (out / "manifest.parquet").exists()
    assert not out.exists() or not any(out.rglob("*.nii.gz"))


def test_corrupt_nifti(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, _ = write_pair(tmp_path / "src", shape=(40, 40, 20))
    raw = img.read_bytes()
    img.write_bytes(raw[: len(raw) // 3])
    rc, err = _run(_import(tmp_path / "src", tmp_path / "out"), capsys)
    assert rc == 2
    _assert_one_line(err, str(img))
    _nothing_written(tmp_path / "out")


def test_label_shape_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, lab = write_pair(tmp_path / "src", label_shape=(12, 10, 7))
    rc, err = _run(_import(tmp_path / "src", tmp_path / "out"), capsys)
    assert rc == 2
    _assert_one_line(err, str(img), str(lab), "shape")
    _nothing_written(tmp_path / "out")


def test_label_affine_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    moved = AFFINE.copy()
    moved[:3, 3] = [0, 0, 4]
    img, lab = write_pair(tmp_path / "src", label_affine=moved)
    rc, err = _run(_import(tmp_path / "src", tmp_path / "out"), capsys)
    assert rc == 2
    _assert_one_line(err, str(img), str(lab), "affine")
    _nothing_written(tmp_path / "out")


def test_label_without_liver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, lab = write_pair(tmp_path / "src", liver_value=6)
    rc, err = _run(_import(tmp_path / "src", tmp_path / "out", liver_label=5), capsys)
    assert rc == 2
    _assert_one_line(err, str(lab), "liver label 5")
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_voxels(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: float) -> None:
    img, _ = write_pair(tmp_path / "src", image_value=bad)
    rc, err = _run(_import(tmp_path / "src", tmp_path / "out"), capsys)
    assert rc == 2
    _assert_one_line(err, str(img), "NaN or infinite")
    _nothing_written(tmp_path / "out")


def _chaos_copy(shared_data: Path, dst: Path, n: int = 3) -> Path:
    """A CHAOS-layout folder with the first ``n`` slices (copied into tmp_path, never the repo)."""
    src = shared_data / "chaos-ct-sample"
    (dst / "DICOM_anon").mkdir(parents=True)
    (dst / "Ground").mkdir()
    for d in sorted((src / "DICOM_anon").glob("*.dcm"))[:n]:
        shutil.copy(d, dst / "DICOM_anon" / d.name)
    for g in sorted((src / "Ground").glob("*.png"))[:n]:
        shutil.copy(g, dst / "Ground" / g.name)
    return dst


def test_chaos_subset_imports(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The copied 3-slice folder is valid as is (so the failures below are caused by the edits)."""
    src = _chaos_copy(shared_data, tmp_path / "case")
    rc, _ = _run(["data", "import-chaos-ct", str(src), "--out", str(tmp_path / "out")], capsys)
    assert rc == 0 and (tmp_path / "out" / "imagesTr" / "ct_case_0000.nii.gz").is_file()


def test_chaos_mask_count_differs(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _chaos_copy(shared_data, tmp_path / "case")
    sorted((src / "Ground").glob("*.png"))[-1].unlink()
    out = tmp_path / "out"
    rc, err = _run(["data", "import-chaos-ct", str(src), "--out", str(out)], capsys)
    assert rc == 2
    _assert_one_line(err, str(src), "2 masks", "3 DICOM slices")
    _nothing_written(out)


def test_chaos_undecodable_transfer_syntax(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    src = _chaos_copy(shared_data, tmp_path / "case")
    victim = sorted((src / "DICOM_anon").glob("*.dcm"))[1]
    ds = pydicom.dcmread(victim)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])  # a broken J2K codestream
    ds["PixelData"].VR = "OB"
    ds.save_as(victim, enforce_file_format=True)
    out = tmp_path / "out"
    rc, err = _run(["data", "import-chaos-ct", str(src), "--out", str(out)], capsys)
    assert rc == 2
    _assert_one_line(err, str(victim), "JPEG 2000", "1.2.840.10008.1.2.4.90")
    _nothing_written(out)


def test_config_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data:\n  root: somewhere\n  sizee: 64\n")
    rc, err = _run(["show-config", str(cfg)], capsys)
    assert rc == 2
    _assert_one_line(err, str(cfg), "data.sizee", "unknown key")


def test_config_value_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data:\n  root: somewhere\n  empty_slice_fraction: 1.5\n")
    rc, err = _run(["show-config", str(cfg)], capsys)
    assert rc == 2
    _assert_one_line(err, str(cfg), "data.empty_slice_fraction", "1.5")


def test_glob_without_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(_import(tmp_path / "nowhere", tmp_path / "out"), capsys)
    assert rc == 2
    _assert_one_line(err, "no files match")


def test_not_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["data", "manifest", str(tmp_path)], capsys)
    assert rc == 2
    _assert_one_line(err, "dataset.json")


def test_inspect_table_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny_phantoms(tmp_path / "p", patients=2, size=16, slices=4)
    png = tmp_path / "montage.png"
    assert main(["data", "inspect", str(root / "ct"), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "phantom_001" in out and "RAS" in out and "20 x 20 x 5" in out
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_data_commands_import_nothing_heavy() -> None:
    """``liverlab --help`` stays instant: the data commands module pulls in no heavy library."""
    import subprocess
    import sys

    code = (
        "import sys, liverlab.data, liverlab.data.commands, argparse;"
        "p = argparse.ArgumentParser(); liverlab.data.commands.register(p.add_subparsers());"
        "print(sorted(m for m in ('torch', 'nibabel', 'polars', 'pydicom', 'matplotlib', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_reexports() -> None:
    import liverlab.data as data

    assert data.load_slices.__module__ == "liverlab.data.cache"
    assert data.Augment.__module__ == "liverlab.data.augment"
    with pytest.raises(AttributeError):
        data.nope  # noqa: B018
