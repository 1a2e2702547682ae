"""Slice cache: preprocessing, selection, alignment, keys and reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import tiny_phantoms

from liverlab.data.cache import load_slices
from liverlab.data.manifest import assign_splits, read_manifest
from liverlab.data.nifti import load_volume
from liverlab.data.preprocess import normalise, resize_slices, select_slices
from liverlab.errors import LiverlabError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_phantoms(tmp_path_factory.mktemp("cache") / "tiny", patients=5)


def test_normalise_ct_window_and_mri_percentiles() -> None:
    ct = np.array([-1000, -160, 40, 240, 3000], dtype=np.float32)
    np.testing.assert_allclose(normalise(ct, "ct", ct_window=(-160, 240)), [-1, -1, 0, 1, 1], atol=1e-6)
    mri = np.linspace(0, 1000, 1001, dtype=np.float32)
    out = normalise(mri, "mri", mri_percentiles=(10, 90))
    assert out.min() == -1 and out.max() == 1
    assert (
        out[500] == pytest.approx(0.0, abs=1e-6) and out[100] == pytest.approx(-1.0) and out[900] == pytest.approx(1.0)
    )
    assert np.all(normalise(np.full(5, 7.0, np.float32), "mri") == 0)  # constant volume: no division by zero


def test_select_slices() -> None:
    label = np.zeros((2, 2, 20), np.uint8)
    label[0, 0, 5:9] = 1
    assert select_slices(label, 0.0).tolist() == [5, 6, 7, 8]
    assert select_slices(label, 1.0).tolist() == list(range(20))
    some = select_slices(label, 0.25)
    assert len(some) == 4 + 4 and set([5, 6, 7, 8]) <= set(some.tolist())
    assert some.tolist() == sorted(some.tolist())


def test_label_resize_known_answer_and_ties() -> None:
    # A 2 x 2 block in the corner of a 4 x 4 label stays one pixel in the corner at 2 x 2.
    block = np.zeros((1, 4, 4), np.uint8)
    block[0, :2, :2] = 1
    assert resize_slices(block, 2, label=True).tolist() == [[[1, 0], [0, 0]]]
    # Three of eight columns: output column 1 is exactly half liver (taps 1/8, 3/8 | 3/8, 1/8 of the 2x
    # antialiased filter). Ties alternate in a checkerboard, so the area stays 3 columns' worth (24 pixels).
    cols = np.zeros((1, 8, 8), np.uint8)
    cols[0, :, :3] = 1
    out = resize_slices(cols, 4, label=True)
    assert out[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert out.sum() * 4 == cols.sum()
    # Class values survive (majority class per pixel, not an average of class numbers).
    multi = np.zeros((1, 4, 4), np.uint8)
    multi[0, :2, :2], multi[0, 2:, 2:] = 2, 4
    assert resize_slices(multi, 2, label=True).tolist() == [[[2, 0], [0, 4]]]


def test_label_resize_keeps_the_image_pixel_centres() -> None:
    # A disc centred at (20.3, 41.7) on a 64 x 64 grid, downsampled 2x: in input pixels, output pixel i is
    # centred at 2i + 0.5. The downsampled disc's centroid must stay where the input's is (nearest-exact
    # picking, 2i + 1, moved it by half an input pixel in both axes) and keep its area.
    ii, jj = np.indices((64, 64))
    disc = (((ii - 20.3) ** 2 + (jj - 41.7) ** 2) <= 12.0**2).astype(np.uint8)[None]
    small = resize_slices(disc, 32, label=True)
    centre_in = np.array([ii[disc[0] > 0].mean(), jj[disc[0] > 0].mean()])
    si, sj = np.nonzero(small[0])
    centre_out = np.array([2 * si.mean() + 0.5, 2 * sj.mean() + 0.5])
    assert np.abs(centre_out - centre_in).max() < 0.1
    assert abs(small.sum() * 4 / disc.sum() - 1.0) < 0.05  # a convex outline loses a little at any threshold


def test_slices_range_shapes_and_values(tiny: Path, tmp_path: Path) -> None:
    s = load_slices(tiny / "ct", "ct", size=16, empty_slice_fraction=1.0, cache_dir=tmp_path)
    assert len(s) == 5 * 8 and s.images.shape == (40, 16, 16) and s.masks.shape == (40, 16, 16)
    assert s.images.dtype == np.float32 and s.masks.dtype == np.uint8
    assert isinstance(s.images, np.memmap) and not s.images.flags.writeable
    assert -1.0 <= float(s.images.min()) and float(s.images.max()) <= 1.0
    assert set(np.unique(s.masks)) == {0, 1}
    assert s.spacing["phantom_000"] == pytest.approx((20.0, 20.0, 5.0))  # 32 -> 16 doubles in-plane spacing
    assert s.case_ids[:8] == ["phantom_000"] * 8 and s.slice_index[:8].tolist() == list(range(8))
    # Slice z of a case is the volume's z slice, windowed and resized.
    vol = load_volume(tiny / "ct/imagesTr/phantom_001_0000.nii.gz", tiny / "ct/labelsTr/phantom_001.nii.gz")
    stack = s.case_stack("phantom_001")
    assert stack.contiguous and stack.spacing == s.spacing["phantom_001"]
    assert vol.label is not None
    np.testing.assert_array_equal(stack.mask_volume().sum(axis=(0, 1)) > 0, vol.label.any(axis=(0, 1)))
    big = load_slices(tiny / "ct", "ct", size=32, empty_slice_fraction=1.0, cache_dir=tmp_path)
    expected = np.clip((vol.image[:, :, 3] + 160) / 400 * 2 - 1, -1, 1)
    np.testing.assert_allclose(big.case_stack("phantom_001").images[3], expected, atol=1e-5)
    np.testing.assert_array_equal(big.case_stack("phantom_001").masks[3], vol.label[:, :, 3])


def test_ct_and_mri_align_slice_for_slice(tiny: Path, tmp_path: Path) -> None:
    kw = dict(size=16, empty_slice_fraction=1.0, split="val", split_cfg=(0.2, 0.2, 1), cache_dir=tmp_path)
    ct = load_slices(tiny / "ct", "ct", **kw)
    mri = load_slices(tiny / "mri", "mri", **kw)
    assert ct.case_ids == mri.case_ids and ct.patient_ids == mri.patient_ids
    np.testing.assert_array_equal(ct.slice_index, mri.slice_index)
    np.testing.assert_array_equal(np.asarray(ct.masks), np.asarray(mri.masks))
    assert not np.allclose(np.asarray(ct.images), np.asarray(mri.images))


def test_empty_fraction_keeps_liver_slices(tiny: Path, tmp_path: Path) -> None:
    s = load_slices(tiny / "mri", "mri", size=16, empty_slice_fraction=0.0, cache_dir=tmp_path)
    per_slice_liver = np.asarray(s.masks).reshape(len(s), -1).any(axis=1)
    assert per_slice_liver.all()
    full = load_slices(tiny / "mri", "mri", size=16, empty_slice_fraction=1.0, cache_dir=tmp_path)
    assert len(s) < len(full)


def test_split_selection_matches_assign_splits(tiny: Path, tmp_path: Path) -> None:
    df = assign_splits(read_manifest(tiny / "ct"), 0.2, 0.2, 5)
    for split in ("train", "val", "test"):
        s = load_slices(tiny / "ct", "ct", size=16, split=split, split_cfg=(0.2, 0.2, 5), cache_dir=tmp_path)
        assert set(s.case_ids) == set(df.filter(df["split"] == split)["case_id"].to_list())


def test_cache_key_reuse_and_invalidation(tiny: Path, tmp_path: Path) -> None:
    a = load_slices(tiny / "ct", "ct", size=16, cache_dir=tmp_path)
    b = load_slices(tiny / "ct", "ct", size=16, cache_dir=tmp_path)
    assert a.key == b.key and a.build_id == b.build_id  # reused, not rebuilt
    c = load_slices(tiny / "ct", "ct", size=16, ct_window=(-100, 200), cache_dir=tmp_path)
    d = load_slices(tiny / "ct", "ct", size=24, cache_dir=tmp_path)
    e = load_slices(tiny / "ct", "ct", size=16, cases=["phantom_000"], cache_dir=tmp_path)
    f = load_slices(tiny / "ct", "ct", size=16, mri_percentiles=(1, 99), cache_dir=tmp_path)  # not a CT setting
    assert len({a.key, c.key, d.key, e.key}) == 4 and f.key == a.key
    assert not list(tmp_path.glob(".*tmp*"))
    assert load_slices(tiny / "ct", "ct", size=16).path == tiny.resolve() / "ct" / ".cache" / a.key  # default cache_dir


def test_changed_file_gives_new_cache(tmp_path: Path) -> None:
    root = tiny_phantoms(tmp_path / "p", patients=2, size=16, slices=4)
    a = load_slices(root / "mri", "mri", size=16)
    src = tiny_phantoms(tmp_path / "q", patients=2, size=16, slices=4, seed=9)
    target = root / "mri/imagesTr/phantom_001_0000.nii.gz"
    target.write_bytes((src / "mri/imagesTr/phantom_001_0000.nii.gz").read_bytes())
    b = load_slices(root / "mri", "mri", size=16)
    assert a.key != b.key
    assert not np.array_equal(np.asarray(a.images), np.asarray(b.images))


def test_bad_arguments(tiny: Path) -> None:
    with pytest.raises(LiverlabError, match="is a ct dataset"):
        load_slices(tiny / "ct", "mri", size=16)
    with pytest.raises(LiverlabError, match="unknown case"):
        load_slices(tiny / "ct", "ct", size=16, cases=["nope"])
    with pytest.raises(LiverlabError, match="split must be"):
        load_slices(tiny / "ct", "ct", size=16, split="validation")


def test_by_case_regroups(tiny: Path, tmp_path: Path) -> None:
    s = load_slices(tiny / "mri", "mri", size=16, empty_slice_fraction=0.5, cache_dir=tmp_path)
    stacks = s.by_case()
    assert list(stacks) == s.cases and sum(len(st.slice_index) for st in stacks.values()) == len(s)
    for cid, st in stacks.items():
        assert st.images.shape[0] == st.masks.shape[0] == len(st.slice_index)
        assert st.image_volume().shape == (16, 16, len(st.slice_index))
        assert np.all(np.diff(st.slice_index) > 0) and st.patient_id == cid


def test_pickles_as_location(tiny: Path, tmp_path: Path) -> None:
    """Workers and Ray tasks get the cache path, not a copy of every slice."""
    import pickle

    s = load_slices(tiny / "ct", "ct", size=32, empty_slice_fraction=1.0, cache_dir=tmp_path)
    blob = pickle.dumps(s)
    assert len(blob) < s.images.nbytes / 4
    back = pickle.loads(blob)
    assert isinstance(back.images, np.memmap) and back.case_ids == s.case_ids and back.build_id == s.build_id
    np.testing.assert_array_equal(np.asarray(back.images), np.asarray(s.images))
