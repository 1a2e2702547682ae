"""Importers: CHAOS CT (DICOM + PNG), NIfTI pairs, case-id pairing, all-or-nothing writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import write_pair

from liverlab.data.importers import case_ids_from_names, import_chaos_ct, import_nifti, pair_by_case
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
