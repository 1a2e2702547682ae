"""NIfTI I/O: canonical orientation, validation, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import AFFINE, write_pair

from liverlab.data.nifti import load_volume, orientation_codes, save_like, save_volume, spacing_from_affine
from liverlab.errors import LiverlabError


def test_roundtrip_spacing_and_dtype(tmp_path: Path) -> None:
    img, lab = write_pair(tmp_path)
    vol = load_volume(img, lab)
    assert vol.image.dtype == np.float32 and vol.label is not None and vol.label.dtype == np.uint8
    assert vol.shape == (12, 10, 6)
    assert vol.spacing == pytest.approx((1.5, 1.5, 4.0))
    assert orientation_codes(vol.affine) == "RAS"
    assert set(np.unique(vol.label)) == {0, 1, 7}


def test_reorients_to_ras(tmp_path: Path) -> None:
    """An L,P,S volume is flipped on load; the same voxel keeps its world position."""
    data = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    lps = np.diag([-2.0, -3.0, 5.0, 1.0])
    lps[:3, 3] = [10, 20, 30]
    path = save_volume(tmp_path / "lps.nii.gz", data, lps)
    vol = load_volume(path)
    assert orientation_codes(vol.affine) == "RAS"
    assert vol.spacing == pytest.approx((2.0, 3.0, 5.0))
    # Voxel (0,0,0) of the file sits at world (10,20,30); find it in the canonical array.
    ijk = np.linalg.solve(vol.affine, [10, 20, 30, 1])[:3].round().astype(int)
    assert vol.image[tuple(ijk)] == data[0, 0, 0]


@pytest.mark.parametrize("axes", [(-2.0, -3.0, 5.0), (2.0, 3.0, 5.0), (-2.0, 3.0, -5.0)])
def test_save_like_writes_the_source_voxel_order_and_affine(tmp_path: Path, axes: tuple[float, float, float]) -> None:
    """A mask computed on the canonical arrays comes back in the image file's own layout (as nnU-Net writes it)."""
    data = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    affine = np.diag([*axes, 1.0])
    affine[:3, 3] = [10, 20, 30]
    src = save_volume(tmp_path / "img.nii.gz", data, affine)
    vol = load_volume(src)
    mask = (vol.image % 3 == 0).astype(np.uint8)  # any function of the canonical voxels
    out = save_like(tmp_path / "mask.nii.gz", mask, vol)
    import nibabel as nib

    written = nib.load(str(out))
    assert np.allclose(written.affine, affine)
    assert np.array_equal(np.asarray(written.dataobj), (data % 3 == 0).astype(np.uint8))  # voxel for voxel
    assert np.array_equal(load_volume(out).image, mask)  # and canonical again on load
    with pytest.raises(ValueError, match="shape"):
        save_like(tmp_path / "bad.nii.gz", mask[:2], vol)


def test_totalseg_volumes_share_canonical_orientation(shared_data: Path) -> None:
    ts = shared_data / "totalseg-examples"
    ct = load_volume(ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz")
    mr = load_volume(ts / "example_mr_sm.nii.gz", ts / "example_seg_mr.nii.gz")
    assert orientation_codes(ct.affine) == orientation_codes(mr.affine) == "RAS"
    assert ct.spacing == pytest.approx((3.0, 3.0, 3.0)) and mr.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert mr.shape == (117, 91, 20) and ct.shape == (122, 101, 30)
    assert (ct.label == 5).any() and (mr.label == 5).any()


def test_spacing_from_oblique_affine() -> None:
    rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.5, 0.7, 3.0])
    assert spacing_from_affine(aff) == pytest.approx((0.5, 0.7, 3.0))


def test_shape_mismatch_names_both_files(tmp_path: Path) -> None:
    img, lab = write_pair(tmp_path, label_shape=(12, 10, 5))
    with pytest.raises(LiverlabError) as err:
        load_volume(img, lab)
    assert str(img) in str(err.value) and str(lab) in str(err.value) and "shape" in str(err.value)


def test_affine_mismatch_names_both_files(tmp_path: Path) -> None:
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0
    img, lab = write_pair(tmp_path, label_affine=shifted)
    with pytest.raises(LiverlabError) as err:
        load_volume(img, lab)
    assert str(img) in str(err.value) and str(lab) in str(err.value) and "affine" in str(err.value)


def test_affine_within_tolerance_is_accepted(tmp_path: Path) -> None:
    near = AFFINE.copy()
    near[0, 3] = 5e-4
    img, lab = write_pair(tmp_path, label_affine=near)
    assert load_volume(img, lab).label is not None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path: Path, bad: float) -> None:
    img, lab = write_pair(tmp_path, image_value=bad)
    with pytest.raises(LiverlabError, match="NaN or infinite") as err:
        load_volume(img, lab)
    assert str(img) in str(err.value)


def test_truncated_file(tmp_path: Path) -> None:
    img, _ = write_pair(tmp_path, shape=(40, 40, 20))
    raw = img.read_bytes()
    img.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LiverlabError) as err:
        load_volume(img)
    assert str(img) in str(err.value)


def test_garbage_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    with pytest.raises(LiverlabError, match="x.nii.gz"):
        load_volume(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LiverlabError, match="no such file"):
        load_volume(tmp_path / "nope.nii.gz")


def test_non_integer_label(tmp_path: Path) -> None:
    img, _ = write_pair(tmp_path)
    lab = save_volume(tmp_path / "frac.nii.gz", np.full((12, 10, 6), 0.5, dtype=np.float32), AFFINE)
    with pytest.raises(LiverlabError, match="integers"):
        load_volume(img, lab)


def test_save_is_atomic_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "v.nii.gz"
    save_volume(target, np.ones((3, 3, 3), np.float32), np.eye(4))
    before = target.read_bytes()

    def boom(img: object, path: str) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    # Patched through the module: only liverlab.data imports nibabel.
    monkeypatch.setattr("liverlab.data.nifti.nib.save", boom)
    with pytest.raises(OSError):
        save_volume(target, np.zeros((3, 3, 3), np.float32), np.eye(4))
    assert target.read_bytes() == before  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]  # no temp left
