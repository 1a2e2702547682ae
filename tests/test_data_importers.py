"""Importers: CHAOS CT (DICOM + PNG), NIfTI pairs, case-id pairing, all-or-nothing writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import write_pair

from liverlab.data.chaos import import_chaos_ct
from liverlab.data.importers import case_ids_from_names, import_nifti, pair_by_case
from liverlab.data.manifest import read_manifest
from liverlab.data.nifti import load_volume, orientation_codes
from liverlab.errors import LiverlabError


@pytest.fixture(scope="module")
def chaos_ct(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chaos") / "ct"
    import_chaos_ct(shared_data / "chaos-ct-sample", out, case_id="chaos_ct_3", progress=False)
    return out


def test_chaos_ct_geometry_and_hu(chaos_ct: Path) -> None:
    vol = load_volume(chaos_ct / "imagesTr/chaos_ct_3_0000.nii.gz", chaos_ct / "labelsTr/chaos_ct_3.nii.gz")
    assert vol.shape == (512, 512, 16)
    assert vol.spacing == pytest.approx((0.7266, 0.7266, 2.0), abs=1e-3)
    assert orientation_codes(vol.affine) == "RAS"
    assert -1024 <= vol.image.min() and vol.image.max() <= 3100
    assert -1024 <= vol.image.min() <= -900  # air is there: HU, not raw uint16


def test_chaos_ct_liver_voxels_exact(chaos_ct: Path, shared_data: Path) -> None:
    from PIL import Image

    pngs = sorted((shared_data / "chaos-ct-sample" / "Ground").glob("*.png"))
    expected = sum(int(np.count_nonzero(np.array(Image.open(p)))) for p in pngs)
    vol = load_volume(chaos_ct / "imagesTr/chaos_ct_3_0000.nii.gz", chaos_ct / "labelsTr/chaos_ct_3.nii.gz")
    assert vol.label is not None and set(np.unique(vol.label)) == {0, 1}
    assert int(vol.label.sum()) == expected
    assert read_manifest(chaos_ct)["liver_voxels"].to_list() == [expected]


def test_chaos_ct_slice_order_and_mask_alignment(chaos_ct: Path, shared_data: Path) -> None:
    """Canonical z=0 is the most inferior slice (i0043, lowest position), pixel grid aligned with its PNG."""
    import pydicom
    from PIL import Image

    src = shared_data / "chaos-ct-sample"
    ds = pydicom.dcmread(src / "DICOM_anon" / "i0043,0000b.dcm")
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    png = np.array(Image.open(src / "Ground" / "liver_GT_043.png")) != 0
    vol = load_volume(chaos_ct / "imagesTr/chaos_ct_3_0000.nii.gz", chaos_ct / "labelsTr/chaos_ct_3.nii.gz")
    assert vol.label is not None
    # DICOM rows/cols are LPS y/x; RAS flips both in-plane axes.
    np.testing.assert_array_equal(vol.image[::-1, ::-1, 0], hu.T)
    np.testing.assert_array_equal(vol.label[::-1, ::-1, 0], png.T.astype(np.uint8))
    # World z of slice 0 is the lowest ImagePositionPatient z.
    assert (vol.affine @ [0, 0, 0, 1])[2] == pytest.approx(1604.5)


def test_chaos_ct_dataset_json(chaos_ct: Path) -> None:
    meta = json.loads((chaos_ct / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 1
    assert not list(chaos_ct.glob(".import-*"))


def test_chaos_mr_keeps_liver_only(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "chaos-mr-t2spir"
    out = import_nifti(str(src / "image_[12].nii.gz"), str(src / "label_[12].nii.gz"), "mri", 1, tmp_path / "mri", progress=False)
    df = read_manifest(out)
    assert df["case_id"].to_list() == ["mri_1", "mri_2"] and df["patient_id"].to_list() == ["mri_1", "mri_2"]
    for cid in ("1", "2"):
        raw = load_volume(src / f"image_{cid}.nii.gz", src / f"label_{cid}.nii.gz")
        assert raw.label is not None and {2, 3, 4} <= set(np.unique(raw.label))
        vol = load_volume(out / f"imagesTr/mri_{cid}_0000.nii.gz", out / f"labelsTr/mri_{cid}.nii.gz")
        assert vol.label is not None and set(np.unique(vol.label)) == {0, 1}
        np.testing.assert_array_equal(vol.label, (raw.label == 1).astype(np.uint8))
        np.testing.assert_allclose(vol.image, raw.image, rtol=1e-6)
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "MRI"}


def test_totalseg_single_pairs(shared_data: Path, tmp_path: Path) -> None:
    ts = shared_data / "totalseg-examples"
    ct = import_nifti(str(ts / "example_ct_sm.nii.gz"), str(ts / "example_seg.nii.gz"), "ct", 5, tmp_path / "ct", progress=False)
    mr = import_nifti(
        str(ts / "example_mr_sm.nii.gz"), str(ts / "example_seg_mr.nii.gz"), "mri", 5, tmp_path / "mr", progress=False
    )
    vc = load_volume(ct / "imagesTr/ct_example_ct_sm_0000.nii.gz", ct / "labelsTr/ct_example_ct_sm.nii.gz")
    vm = load_volume(mr / "imagesTr/mri_example_mr_sm_0000.nii.gz", mr / "labelsTr/mri_example_mr_sm.nii.gz")
    assert orientation_codes(vc.affine) == orientation_codes(vm.affine) == "RAS"
    raw = load_volume(ts / "example_mr_sm.nii.gz", ts / "example_seg_mr.nii.gz")
    assert raw.label is not None and vm.label is not None
    assert int(vm.label.sum()) == int((raw.label == 5).sum()) > 0


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["image_1.nii.gz", "image_12.nii.gz"], ["1", "12"]),
        (["label_1.nii.gz", "label_12.nii.gz"], ["1", "12"]),
        (["case_007_0000.nii.gz", "case_010_0000.nii.gz"], ["007", "010"]),
        (["img-3.nii", "img-4.nii"], ["3", "4"]),
        (["a_p1_t2.nii.gz", "a_p2_t2.nii.gz", "a_p10_t2.nii.gz"], ["p1", "p2", "p10"]),
        (["only_one_0000.nii.gz"], ["only_one"]),
    ],
)
def test_case_id_rule(names: list[str], expected: list[str]) -> None:
    paths = [Path(n) for n in names]
    ids = case_ids_from_names(paths)
    assert [ids[p] for p in paths] == expected


def test_pairing_is_prefix_independent(tmp_path: Path) -> None:
    images = [tmp_path / f"scan-{i}.nii.gz" for i in ("03", "11")]
    labels = [tmp_path / f"mask_{i}_seg.nii.gz" for i in ("11", "03")]
    pairs = pair_by_case(images, labels)
    assert pairs == {"03": (images[0], labels[1]), "11": (images[1], labels[0])}


def test_unmatched_files_are_listed(tmp_path: Path) -> None:
    images = [tmp_path / f"image_{i}.nii.gz" for i in (1, 2, 3)]
    labels = [tmp_path / f"label_{i}.nii.gz" for i in (1, 2, 4)]
    with pytest.raises(LiverlabError) as err:
        pair_by_case(images, labels)
    assert "image_3.nii.gz" in str(err.value) and "label_4.nii.gz" in str(err.value)
    assert "image_1" not in str(err.value)


def test_append_updates_num_training(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_pair(src, "1")
    write_pair(src, "2")
    out = tmp_path / "out"
    import_nifti(str(src / "image_1.nii.gz"), str(src / "label_1.nii.gz"), "mri", 1, out, progress=False)
    import_nifti(str(src / "image_2.nii.gz"), str(src / "label_2.nii.gz"), "mri", 1, out, progress=False)
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2
    assert read_manifest(out).height == 2
    with pytest.raises(LiverlabError, match="already present"):
        import_nifti(str(src / "image_2.nii.gz"), str(src / "label_2.nii.gz"), "mri", 1, out, progress=False)
    with pytest.raises(LiverlabError, match="holds mri"):
        import_nifti(str(src / "image_*.nii.gz"), str(src / "label_*.nii.gz"), "ct", 1, out, progress=False)


def test_failed_import_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_pair(src, "1")
    write_pair(src, "2", liver=False)  # fails after case 1 was written to staging
    out = tmp_path / "out"
    with pytest.raises(LiverlabError, match="label_2"):
        import_nifti(str(src / "image_*.nii.gz"), str(src / "label_*.nii.gz"), "ct", 1, out, progress=False)
    assert not out.exists()


def test_failed_append_keeps_dataset(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_pair(src, "1")
    write_pair(src / "bad", "2", liver=False)
    out = tmp_path / "out"
    import_nifti(str(src / "image_1.nii.gz"), str(src / "label_1.nii.gz"), "ct", 1, out, progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(LiverlabError):
        import_nifti(str(src / "bad/image_2.nii.gz"), str(src / "bad/label_2.nii.gz"), "ct", 1, out, progress=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


# ----------------------------------------------------------------------------- the CHAOS release layout

MR_SLICES = 4  # consecutive liver slices per patient written as DICOM


def _write_dicom(path: Path, pixels: np.ndarray, affine_ras: np.ndarray, k: int, modality: str, number: int) -> None:
    """One uncompressed DICOM slice: pixel (row r, col c) = ``pixels[c, r]``, geometry from ``affine_ras``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, modality
    ds.InstanceNumber = number
    dx, dy = (float(np.linalg.norm(lps[:3, i])) for i in (0, 1))
    ds.ImageOrientationPatient = [*(lps[:3, 0] / dx).round(6).tolist(), *(lps[:3, 1] / dy).round(6).tolist()]
    ds.ImagePositionPatient = (lps @ [0, 0, k, 1])[:3].round(4).tolist()
    ds.PixelSpacing = [dy, dx]  # between rows, between columns
    ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
    arr = np.ascontiguousarray(pixels.T.astype(np.uint16))
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_png(path: Path, label: np.ndarray) -> None:
    """CHAOS MR Ground coding: liver 63, right kidney 126, left kidney 189, spleen 252 (from labels 1..4)."""
    from PIL import Image

    grey = np.zeros(label.shape, dtype=np.uint8)
    for value, code in ((1, 63), (2, 126), (3, 189), (4, 252)):
        grey[label == value] = code
    Image.fromarray(np.ascontiguousarray(grey.T)).save(path)


def write_chaos_mr_tree(root: Path, src: Path, patients: tuple[str, ...], seed: int = 0) -> dict[str, tuple[np.ndarray, ...]]:
    """A CHAOS-layout MR tree (T2SPIR and T1DUAL) from the shared NIfTI volumes; returns pid -> (image, label, affine).

    File names are shuffled against slice position, so only ImagePositionPatient gives the order.
    """
    rng = np.random.default_rng(seed)
    truth = {}
    for pid in patients:
        vol = load_volume(src / f"image_{pid}.nii.gz", src / f"label_{pid}.nii.gz")
        assert vol.label is not None
        zs = np.flatnonzero((vol.label == 1).any(axis=(0, 1)))
        z0 = int(zs[len(zs) // 2])
        image = np.round(vol.image[:, :, z0 : z0 + MR_SLICES]).clip(0, 65535)
        label = vol.label[:, :, z0 : z0 + MR_SLICES].astype(np.uint8)
        affine = vol.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, z0], [0, 0, 0, 1]], dtype=float)
        truth[pid] = (image, label, affine)
        names = rng.permutation(MR_SLICES) + 1
        pdir = root / "Train_Sets" / "MR" / pid
        series = {
            "T2SPIR/DICOM_anon": (image, lambda n: f"IMG-0002-{n:05d}"),
            "T1DUAL/DICOM_anon/InPhase": (image * 0.5, lambda n: f"IMG-0004-{2 * n:05d}"),
            "T1DUAL/DICOM_anon/OutPhase": (image * 0.25, lambda n: f"IMG-0004-{2 * n - 1:05d}"),
        }
        for sub, (pixels, name) in series.items():
            (pdir / sub).mkdir(parents=True)
            for k in range(MR_SLICES):
                _write_dicom(pdir / sub / f"{name(names[k])}.dcm", pixels[:, :, k], affine, k, "MR", int(names[k]))
        # T1DUAL's one Ground series is named after the in-phase files (out-phase pairs by sorted name).
        grounds = {"T2SPIR/Ground": series["T2SPIR/DICOM_anon"][1], "T1DUAL/Ground": series["T1DUAL/DICOM_anon/InPhase"][1]}
        for ground, name in grounds.items():
            (pdir / ground).mkdir(parents=True)
            for k in range(MR_SLICES):
                _write_png(pdir / ground / f"{name(names[k])}.png", label[:, :, k])
    return truth


@pytest.fixture(scope="module")
def chaos_mr_tree(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[np.ndarray, ...]]]:
    root = tmp_path_factory.mktemp("chaos_release")
    return root, write_chaos_mr_tree(root, shared_data / "chaos-mr-t2spir", ("1", "3"))


@pytest.mark.parametrize(("modality", "scale"), [("t2spir", 1.0), ("t1in", 0.5), ("t1out", 0.25)])
def test_chaos_mr_release_exact(chaos_mr_tree, tmp_path: Path, modality: str, scale: float) -> None:
    from liverlab.data.chaos import import_chaos

    root, truth = chaos_mr_tree
    out = import_chaos(root, tmp_path / "mri", modality, progress=False)
    df = read_manifest(out)
    assert df["case_id"].to_list() == [f"{modality}_1", f"{modality}_3"]
    assert df["patient_id"].to_list() == ["mr_1", "mr_3"]
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "MRI"}
    for pid, (image, label, affine) in truth.items():
        vol = load_volume(out / f"imagesTr/{modality}_{pid}_0000.nii.gz", out / f"labelsTr/{modality}_{pid}.nii.gz")
        assert vol.label is not None and set(np.unique(vol.label)) == {0, 1}
        # Liver (63) only, kidneys (126, 189) and spleen (252) dropped; slices in position order.
        np.testing.assert_array_equal(vol.label, (label == 1).astype(np.uint8))
        np.testing.assert_array_equal(vol.image, np.floor(image * scale))
        np.testing.assert_allclose(vol.affine, affine, atol=1e-3)


def test_chaos_root_may_be_train_sets_or_its_parent(chaos_mr_tree, tmp_path: Path) -> None:
    from liverlab.data.chaos import find_patients

    root, _ = chaos_mr_tree
    a = find_patients(root, "t2spir")
    b = find_patients(root / "Train_Sets", "t2spir")
    c = find_patients(root / "Train_Sets" / "MR" / "3", "t2spir")
    assert [p.patient for p in a] == [p.patient for p in b] == ["1", "3"] and [p.patient for p in c] == ["3"]
    assert a[0].dicom_dir == root / "Train_Sets/MR/1/T2SPIR/DICOM_anon"


def test_chaos_ct_full_patient(shared_data: Path, tmp_path: Path) -> None:
    """The whole CHAOS CT patient: 78 slices, liver voxels = non-zero PNG pixels, slice by slice."""
    from PIL import Image

    from liverlab.data.chaos import import_chaos

    src = shared_data / "chaos-ct-full"
    out = import_chaos(src, tmp_path / "ct", "ct", progress=False)
    vol = load_volume(out / "imagesTr/ct_chaos-ct-full_0000.nii.gz", out / "labelsTr/ct_chaos-ct-full.nii.gz")
    assert vol.label is not None and vol.shape == (512, 512, 78)
    assert vol.spacing == pytest.approx((0.7266, 0.7266, 2.0), abs=1e-3)
    pngs = sorted((src / "Ground").glob("*.png"))
    masks = {int(p.stem.rsplit("_", 1)[1]): np.array(Image.open(p)) != 0 for p in pngs}
    assert int(vol.label.sum()) == sum(int(m.sum()) for m in masks.values()) > 0
    # Slice z of the canonical volume is DICOM file i00NN with NN = 77 - z (positions descend with the number).
    for z in (0, 30, 77):
        np.testing.assert_array_equal(vol.label[::-1, ::-1, z], masks[77 - z].T.astype(np.uint8))
    assert read_manifest(out)["patient_id"].to_list() == ["ct_chaos-ct-full"]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from liverlab.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("fault", ["missing_ground", "mask_count", "empty_root", "wrong_modality"])
def test_chaos_bad_release_one_line_exit_2(chaos_mr_tree, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str) -> None:
    import shutil

    root = tmp_path / "release"
    shutil.copytree(chaos_mr_tree[0], root)
    modality, expected = "t2spir", ""
    if fault == "missing_ground":
        shutil.rmtree(root / "Train_Sets/MR/3/T2SPIR/Ground")
        expected = str(root / "Train_Sets/MR/3/T2SPIR/Ground") + ": missing"
    elif fault == "mask_count":
        sorted((root / "Train_Sets/MR/3/T2SPIR/Ground").glob("*.png"))[0].unlink()
        expected = f"{MR_SLICES} DICOM slices but {MR_SLICES - 1} masks"
    elif fault == "empty_root":
        root = tmp_path / "empty"
        root.mkdir()
        expected = "no CHAOS t2spir patients"
    else:
        modality, expected = "ct", "no CT/ folder for --modality ct (found: MR)"
    out = tmp_path / "out"
    rc, err = _cli(["data", "import-chaos", str(root), "--out", str(out), "--modality", modality], capsys)
    assert rc == 2 and "\n" not in err and expected in err, err
    assert not out.exists()  # patient 1 imported fine before patient 3 failed: nothing of it is left


# ----------------------------------------------------------------------------- data.import (first use)


def _import_config(tmp: Path, imports: object, **data: object):
    from liverlab.config import config_from_dict

    raw = {"stage": "unet", "data": {"mri": "mri", "ct": "ct", "import": imports, **data}}
    return config_from_dict(raw, source="exp.yaml", base_dir=tmp)


def test_data_import_runs_once_on_first_use(chaos_mr_tree, tmp_path: Path) -> None:
    from liverlab.train.data import dataset_dirs

    write_pair(tmp_path / "src", "7")
    release, _ = chaos_mr_tree
    cfg = _import_config(tmp_path, [
        {"kind": "nifti", "images": "src/image_*.nii.gz", "labels": "src/label_*.nii.gz", "modality": "mri"},
        {"kind": "chaos", "root": str(release), "modality": "t2spir"},
    ])  # fmt: skip
    spec = cfg.data.import_[0]  # type: ignore[index]
    assert spec.images == str(tmp_path / "src/image_*.nii.gz")  # relative globs resolved like data paths
    ct_dir, mri_dir = dataset_dirs(cfg)
    assert mri_dir == tmp_path / "mri" and not ct_dir.exists()
    assert read_manifest(mri_dir)["case_id"].to_list() == ["mri_image_7", "t2spir_1", "t2spir_3"]
    stamp = (mri_dir / "dataset.json").stat().st_mtime_ns
    dataset_dirs(cfg)  # second use: the dataset is there, nothing is imported again
    assert (mri_dir / "dataset.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mri", "mri.lock", "src"]


def test_data_import_failure_leaves_nothing(chaos_mr_tree, tmp_path: Path) -> None:
    from liverlab.train.data import dataset_dirs

    write_pair(tmp_path / "src", "7")
    cfg = _import_config(tmp_path, [
        {"kind": "nifti", "images": "src/image_*.nii.gz", "labels": "src/label_*.nii.gz", "modality": "mri"},
        {"kind": "chaos", "root": "no-such-release", "modality": "t2spir"},
    ])  # fmt: skip
    with pytest.raises(LiverlabError, match=r"data.import \(chaos, modality t2spir\): .*no-such-release: no such folder"):
        dataset_dirs(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mri.lock", "src"]  # no half dataset for the next run


@pytest.mark.parametrize(
    ("imports", "data", "message"),
    [
        ({"kind": "dicom", "root": "x", "modality": "ct"}, {}, "data.import"),
        ({"kind": "chaos", "root": "x", "modality": "t1"}, {}, "data.import.0.chaos.modality"),
        ({"kind": "nifti", "images": "a", "labels": "b", "modality": "mri", "liver_label": 0}, {}, "liver_label"),
        ({"kind": "chaos", "root": "x", "modality": "ct"}, {"ct": None}, "needs data.ct"),
        ({"kind": "chaos", "root": "x", "modality": "ct"}, {"root": "r", "phantom": {}}, "exclude each other"),
    ],
)
def test_data_import_config_errors(tmp_path: Path, imports: dict, data: dict, message: str) -> None:
    with pytest.raises(LiverlabError) as err:
        _import_config(tmp_path, imports, **data)
    assert "exp.yaml" in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_chaos_mask_values(tmp_path: Path) -> None:
    """MR Ground: liver is 55 < v <= 70 (CHAOS's own rule), kidneys/spleen dropped; CT: any non-zero pixel."""
    from PIL import Image

    from liverlab.data.chaos import MR_LIVER_RANGE, _read_mask

    values = np.array([[0, 55, 56, 63, 70, 71, 126, 189, 252]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    mr = _read_mask(tmp_path / "m.png", values.shape, MR_LIVER_RANGE)
    ct = _read_mask(tmp_path / "m.png", values.shape, None)
    assert mr.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0, 0]]
    assert ct.tolist() == [[0, 1, 1, 1, 1, 1, 1, 1, 1]]
    with pytest.raises(LiverlabError, match=r"m.png: mask shape \(1, 9\) differs from the DICOM slice shape \(9, 1\)"):
        _read_mask(tmp_path / "m.png", (9, 1), None)


def test_first_use_import_refuses_a_stale_folder(tmp_path: Path) -> None:
    """A folder imported when the source held fewer patients is an error naming the new cases, not used silently."""
    from liverlab.data.importers import ensure_imported

    src, out = tmp_path / "src", tmp_path / "mri"
    for name in ("1", "2"):
        write_pair(src, name)
    spec = {"kind": "nifti", "images": str(src / "image_*.nii.gz"), "labels": str(src / "label_*.nii.gz"),
            "modality": "mri", "liver_label": 1}
    ensure_imported(out, [spec], log=False)
    assert ensure_imported(out, [spec], log=False) == out  # unchanged source: reused
    write_pair(src, "13")  # the source grew
    with pytest.raises(LiverlabError, match=r"imported earlier with 2 case\(s\).*mri_13.*delete"):
        ensure_imported(out, [spec], log=False)
    gone = {**spec, "images": str(tmp_path / "moved" / "image_*.nii.gz")}
    assert ensure_imported(out, [gone], log=False) == out  # sources no longer here: the import stands
