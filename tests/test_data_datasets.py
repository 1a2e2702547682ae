"""torch datasets and the mixing sampler (augmentation: test_data_augment.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import tiny_phantoms
from torch.utils.data import ConcatDataset, DataLoader

from liverlab.data.cache import SliceSet, load_slices
from liverlab.data.datasets import MixingSampler, SegmentationSlices, UnpairedSlices, mixing_counts, unpaired_patients
from liverlab.errors import LiverlabError


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> tuple[SliceSet, SliceSet]:
    root = tiny_phantoms(tmp_path_factory.mktemp("ds") / "tiny", patients=4)
    ct = load_slices(root / "ct", "ct", size=32, empty_slice_fraction=1.0, cases=["phantom_000", "phantom_001"])
    mri = load_slices(root / "mri", "mri", size=32, empty_slice_fraction=0.0, cases=["phantom_002", "phantom_003"])
    return ct, mri


def test_segmentation_item(slices: tuple[SliceSet, SliceSet]) -> None:
    ct, _ = slices
    ds = SegmentationSlices(ct)
    item = ds[3]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.long
    assert item["patient_id"] == ct.patient_ids[3]
    np.testing.assert_array_equal(item["image"][0].numpy(), ct.images[3])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and len(batch["patient_id"]) == 4


def test_unpaired_draws_mri_independently(slices: tuple[SliceSet, SliceSet]) -> None:
    ct, mri = slices
    ds = UnpairedSlices(ct, mri, seed=11)
    item = ds[0]
    assert item["ct"].shape == (1, 32, 32) and item["mri"].shape == (1, 32, 32) and item["ct_mask"].dtype == torch.long
    assert item["ct_patient_id"] != item["mri_patient_id"]
    order0 = ds._mri_order.copy()
    assert len(order0) == len(ct)
    counts = np.bincount(order0, minlength=len(mri))
    assert counts.max() - counts.min() <= 1  # every MRI slice used about equally
    assert not np.array_equal(order0[: len(mri)], np.arange(len(mri)))  # not tied to the CT index
    ds.set_epoch(1)
    assert not np.array_equal(ds._mri_order, order0)
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds._mri_order, order0)
    np.testing.assert_array_equal(UnpairedSlices(ct, mri, seed=11)._mri_order, order0)
    j = int(order0[5])
    np.testing.assert_array_equal(ds[5]["mri"][0].numpy(), mri.images[j])


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0, 2.04, 3.3])
def test_mixing_ratio(ratio: float) -> None:
    sampler = MixingSampler(n_real=350, n_synth=714, ratio=ratio, num_samples=1064, seed=0)
    idx = list(sampler)
    assert len(idx) == len(sampler) == 1064
    n_synth = sum(i >= 350 for i in idx)
    n_real = len(idx) - n_synth
    assert (n_real, n_synth) == mixing_counts(1064, ratio) == sampler.counts
    if ratio == 0:
        assert n_synth == 0
    else:
        assert abs(n_synth / n_real - ratio) <= ratio / n_real + 1.5 / n_real  # within rounding
    assert all(0 <= i < 350 + 714 for i in idx)
    if ratio == 1.0:  # real indices cover the real set without repeats when they fit
        reals = [i for i in idx if i < 350]
        assert len(set(reals)) == min(len(reals), 350)


def test_mixing_sampler_reproducible_and_with_concat(slices: tuple[SliceSet, SliceSet]) -> None:
    a = MixingSampler(10, 20, 2.0, 30, seed=4)
    first = list(a)
    second = list(a)  # the epoch advances
    assert first != second
    a.set_epoch(0)
    assert list(a) == first
    ct, mri = slices
    real, synth = SegmentationSlices(mri), SegmentationSlices(ct)
    sampler = MixingSampler(len(real), len(synth), 1.0, 16, seed=0)
    loader = DataLoader(ConcatDataset([real, synth]), batch_size=16, sampler=sampler)
    batch = next(iter(loader))
    assert batch["image"].shape == (16, 1, 32, 32)


def test_mixing_sampler_errors() -> None:
    with pytest.raises(LiverlabError, match="synthetic dataset is empty"):
        MixingSampler(100, 0, 1.0, 10)
    with pytest.raises(LiverlabError, match=">= 0"):
        MixingSampler(100, 10, -1.0, 10)
    assert list(MixingSampler(5, 0, 0.0, 7)) and all(i < 5 for i in MixingSampler(5, 0, 0.0, 7))


def test_unpaired_patients() -> None:
    ids = [f"p{i}" for i in range(7)]
    ct, mri = unpaired_patients(ids, seed=2)
    assert not set(ct) & set(mri) and sorted(ct + mri) == ids and len(ct) == 4
    assert unpaired_patients(list(reversed(ids)), seed=2) == (ct, mri)
    with pytest.raises(LiverlabError):
        unpaired_patients(["only"], seed=0)
